#!/usr/bin/env bash
# Distributed testing with torchrun (mmseg convention): dist_test.sh CONFIG CHECKPOINT NPROC [args...]
# Environment: NNODES, NODE_RANK, PORT (default 29500), MASTER_ADDR, PYTHON (default: the
# repository's .venv/bin/python when it exists, else python).
# On machines without a GPU the gloo backend is used automatically (mmseg_pm.compat.prepare_cfg).
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
VENV_PY="$(dirname "$0")/../.venv/bin/python"
[ -x "$VENV_PY" ] && DEFAULT_PY=$VENV_PY || DEFAULT_PY=python
PYTHON=${PYTHON:-$DEFAULT_PY}

$PYTHON -m torch.distributed.run \
    --nnodes=$NNODES \
    --node_rank=$NODE_RANK \
    --master_addr=$MASTER_ADDR \
    --nproc_per_node=$GPUS \
    --master_port=$PORT \
    "$(dirname "$0")"/test.py \
    "$CONFIG" "$CHECKPOINT" \
    --launcher pytorch "${@:4}"
