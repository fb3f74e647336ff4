#!/usr/bin/env bash
# Distributed testing with torchrun (mmseg convention): dist_test.sh CONFIG CHECKPOINT NPROC [args...]
# Environment: NNODES, NODE_RANK, PORT (default 29500), MASTER_ADDR, PYTHON (default python).
# On machines without a GPU the gloo backend is used automatically (mmseg_pm.utils.runtime).
if [ $# -lt 3 ]; then
    echo "usage: $0 CONFIG CHECKPOINT NPROC [test.py args...]" >&2
    exit 2
fi
CONFIG=$1
CHECKPOINT=$2
GPUS=$3
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
    "$(dirname "$0")"/test.py \
    "$CONFIG" "$CHECKPOINT" \
    --launcher pytorch "${@:4}"
