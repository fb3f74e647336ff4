#!/usr/bin/env bash
# Distributed training with torchrun (mmseg convention): dist_train.sh CONFIG NPROC [args...]
# Environment: NNODES, NODE_RANK, PORT (default 29500), MASTER_ADDR, PYTHON (default: the
# repository's .venv/bin/python when it exists, else python).
# On machines without a GPU the gloo backend is used automatically (mmseg_pm.compat.prepare_cfg).
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
VENV_PY="$(dirname "$0")/../.venv/bin/python"
[ -x "$VENV_PY" ] && DEFAULT_PY=$VENV_PY || DEFAULT_PY=python
PYTHON=${PYTHON:-$DEFAULT_PY}

$PYTHON -m torch.distributed.run \
    --nnodes=$NNODES \
    --node_rank=$NODE_RANK \
    --master_addr=$MASTER_ADDR \
    --nproc_per_node=$GPUS \
    --master_port=$PORT \
    "$(dirname "$0")"/train.py \
    "$CONFIG" \
    --launcher pytorch "${@:3}"
