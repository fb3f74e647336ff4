#!/usr/bin/env bash
# The main job on the real ADE20K sample (`make demo`): smoke numbers on 8 images, not results.
#  1. link the sample (30 train / 8 val; synthetic fallback without ../shared)
#  2. train a baseline Segmenter ViT-S briefly from random initialisation (the "teacher")
#  3. compress it with the main config's recipe (scoring, global search) and finetune it with
#     self-distillation for a few iterations (configs/demo/pm_segmenter_vit-s_ade20k-sample.py)
#  4. print the structure table, GFLOPs baseline vs compressed, mIoU of teacher and student
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
WORK=work_dirs/demo
BASE_CFG=configs/demo/segmenter_vit-s_ade20k-sample.py
PM_CFG=configs/demo/pm_segmenter_vit-s_ade20k-sample.py
rm -rf $WORK && mkdir -p $WORK
$PY tools/prepare_ade20k_sample.py --out data/ade20k_sample
echo "demo: [1/4] baseline Segmenter ViT-S, 20 iterations from random initialisation" \
     "(no ImageNet weights needed)"
$PY tools/train.py $BASE_CFG --work-dir $WORK/baseline > $WORK/train_baseline.log 2>&1 \
    || { tail -30 $WORK/train_baseline.log; exit 1; }
echo "demo: [2/4] compress (4 scoring iterations) + finetune with self-distillation (10 its)"
$PY tools/train.py $PM_CFG --work-dir $WORK/pm > $WORK/train_pm.log 2>&1 \
    || { tail -30 $WORK/train_pm.log; exit 1; }
echo "demo: [3/4] GFLOPs"
$PY tools/analysis_tools/get_flops.py $BASE_CFG $WORK/baseline/iter_20.pth \
    > $WORK/flops_baseline.txt 2>&1
$PY tools/analysis_tools/get_flops.py $PM_CFG $WORK/pm/iter_10.pth > $WORK/flops_pm.txt 2>&1
echo "demo: [4/4] test teacher and student on the 8 validation images"
$PY tools/test.py $BASE_CFG $WORK/baseline/iter_20.pth --work-dir $WORK/test_teacher \
    > $WORK/test_teacher.txt 2>&1
$PY tools/test.py $PM_CFG $WORK/pm/iter_10.pth --work-dir $WORK/test_student \
    > $WORK/test_student.txt 2>&1
$PY - "$WORK" <<'PYEOF'
import json, re, sys
work = sys.argv[1]
record = json.load(open(f'{work}/pm/pm_structure.json'))
print('\n=== Prune-and-Merge structure (keep_rate={keep_rate}, prune_rate={prune_rate}, '
      'allocation={allocation}) ==='.format(**record['settings']))
print(record['table'])
def last(path, pattern):
    lines = [l for l in open(path) if re.search(pattern, l)]
    return lines[-1].strip() if lines else f'(not found in {path})'
print('\n=== GFLOPs at 512x512 (mmengine.analysis, 1 multiply-add = 1 FLOP) ===')
print('baseline  :', last(f'{work}/flops_baseline.txt', r'^Total GFLOPs|GFLOPs total|total'))
print('compressed:', last(f'{work}/flops_pm.txt', r'M/R counted'))
print('\n=== mIoU on the 8-image sample split (smoke test, not a result) ===')
print('teacher (uncompressed):', last(f'{work}/test_teacher.txt', 'Test metrics'))
print('student (compressed)  :', last(f'{work}/test_student.txt', 'Test metrics'))
PYEOF
