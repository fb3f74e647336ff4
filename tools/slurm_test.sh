#!/usr/bin/env bash
# Distributed testing under Slurm (mmseg convention; adapted from mmseg's tools/slurm_test.sh,
# Apache-2.0): one task per GPU, MMEngine reads rank / world size / master from Slurm.
#
#   [GPUS=4] [GPUS_PER_NODE=4] [CPUS_PER_TASK=5] [SRUN_ARGS="..."] [PYTHON=.venv/bin/python] \
#   bash tools/slurm_test.sh PARTITION JOB_NAME CONFIG CHECKPOINT [tools/test.py args...]
#
# CPU-only nodes: GPUS_PER_NODE=0 requests no GPU and runs TASKS_PER_NODE tasks per node
# (default 1); the gloo backend is then chosen automatically. MASTER_PORT defaults to 29500.
set -x

if [ $# -lt 4 ]; then
    echo "usage: $0 PARTITION JOB_NAME CONFIG CHECKPOINT [test.py args...]" >&2
    exit 2
fi
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
CHECKPOINT=$4
GPUS=${GPUS:-4}
GPUS_PER_NODE=${GPUS_PER_NODE:-4}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
SRUN_ARGS=${SRUN_ARGS:-""}
VENV_PY="$(dirname "$0")/../.venv/bin/python"
[ -x "$VENV_PY" ] && DEFAULT_PY=$VENV_PY || DEFAULT_PY=python
PYTHON=${PYTHON:-$DEFAULT_PY}
PY_ARGS=("${@:5}")
TOOLS="$(cd "$(dirname "$0")" && pwd)"

if [ "${GPUS_PER_NODE}" -gt 0 ]; then
    GRES="--gres=gpu:${GPUS_PER_NODE}"
    TASKS_PER_NODE=${GPUS_PER_NODE}
else
    GRES=""
    TASKS_PER_NODE=${TASKS_PER_NODE:-1}
fi

PYTHONPATH="${TOOLS}/..":$PYTHONPATH \
srun -p "${PARTITION}" \
    --job-name="${JOB_NAME}" \
    ${GRES} \
    --ntasks="${GPUS}" \
    --ntasks-per-node="${TASKS_PER_NODE}" \
    --cpus-per-task="${CPUS_PER_TASK}" \
    --kill-on-bad-exit=1 \
    ${SRUN_ARGS} \
    ${PYTHON} -u "${TOOLS}/test.py" "${CONFIG}" "${CHECKPOINT}" --launcher="slurm" "${PY_ARGS[@]}"
