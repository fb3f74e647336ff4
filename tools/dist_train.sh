#!/usr/bin/env bash
# Distributed training with torchrun (mmseg convention): dist_train.sh CONFIG NPROC [args...]
# Environment: NNODES, NODE_RANK, PORT (default 29500), MASTER_ADDR, PYTHON (default python).
# On machines without a GPU the gloo backend is used automatically (mmseg_pm.utils.runtime).
if [ $# -lt 2 ]; then
    echo "usage: $0 CONFIG NPROC [train.py args...]" >&2
    exit 2
fi
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
    "$CONFIG" \
    --launcher pytorch "${@:3}"
