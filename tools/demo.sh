#!/usr/bin/env bash
# The main job on the real ADE20K sample (make demo): train briefly, then test and print mIoU.
# Smoke numbers on 8 validation images, not results.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
WORK=work_dirs/demo
$PY tools/prepare_ade20k_sample.py --out data/ade20k_sample
echo "demo: training from random initialisation (no ImageNet weights needed), 20 iterations"
$PY tools/train.py configs/demo/segmenter_vit-s_ade20k-sample.py --work-dir $WORK/baseline
$PY tools/test.py configs/demo/segmenter_vit-s_ade20k-sample.py $WORK/baseline/iter_20.pth \
    --work-dir $WORK/baseline/test
