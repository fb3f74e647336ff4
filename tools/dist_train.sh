#!/usr/bin/env bash
# Distributed training with torchrun (mmseg convention): dist_train.sh CONFIG NPROC [args...]
# On machines without a GPU the gloo backend is used automatically (tools/train.py).
CONFIG=$1
GPUS=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}
PYTHON=${PYTHON:-python}

$PYTHON -m torch.distributed.run \
    --nnodes=$NNODES \
    --node_rank=$NODE_RANK \
    --master_addr=$MASTER_ADDR \
    --nproc_per_node=$GPUS \
    --master_port=$PORT \
    "$(dirname "$0")"/train.py \
    $CONFIG \
    --launcher pytorch ${@:3}
