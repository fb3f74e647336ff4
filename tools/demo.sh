#!/usr/bin/env bash
# The main job on the real ADE20K sample (`make demo`): smoke numbers on 8 images, not results.
#  1. link the sample (30 train / 8 val; synthetic fallback without ../shared)
#  2. train a baseline Segmenter ViT-S briefly from random initialisation (the "teacher")
#  3. compress it with the main config's recipe (scoring, global search) and finetune it with
#     self-distillation for a few iterations (configs/demo/pm_segmenter_vit-s_ade20k-sample.py)
#  4. GFLOPs baseline vs compressed, mIoU of teacher and student on the 8 validation images
#  5. every method compared on the demo model (tools/analysis_tools/compare_methods.py): a table
#     and a plot of accuracy against GFLOPs and latency
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
WORK=work_dirs/demo
DATA=data/ade20k_sample/ADEChallengeData2016
BASE_CFG=configs/demo/segmenter_vit-s_ade20k-sample.py
PM_CFG=configs/demo/pm_segmenter_vit-s_ade20k-sample.py
rm -rf $WORK && mkdir -p $WORK
run() {  # run LOG CMD...: the command's output goes to LOG; on failure its tail is shown
    local log=$1; shift
    "$@" > "$log" 2>&1 || { tail -30 "$log"; echo "demo: failed, full log: $log"; exit 1; }
}
$PY tools/dataset_converters/prepare_ade20k_sample.py --out data/ade20k_sample
echo "demo: [1/5] baseline Segmenter ViT-S, 20 iterations from random initialisation" \
     "(no ImageNet weights needed)"
run $WORK/train_baseline.log $PY tools/train.py $BASE_CFG --work-dir $WORK/baseline
echo "demo: [2/5] compress (4 scoring iterations) + finetune with self-distillation (10 its)"
run $WORK/train_pm.log $PY tools/train.py $PM_CFG --work-dir $WORK/pm
echo "demo: [3/5] GFLOPs"
run $WORK/flops_baseline.log $PY tools/analysis_tools/get_flops.py $BASE_CFG \
    $WORK/baseline/iter_20.pth --out $WORK/flops_baseline.json
run $WORK/flops_pm.log $PY tools/analysis_tools/get_flops.py $PM_CFG $WORK/pm/iter_10.pth \
    --out $WORK/flops_pm.json
echo "demo: [4/5] test teacher and student on the 8 validation images"
run $WORK/test_teacher.log $PY tools/test.py $BASE_CFG $WORK/baseline/iter_20.pth \
    --work-dir $WORK/test_teacher
run $WORK/test_student.log $PY tools/test.py $PM_CFG $WORK/pm/iter_10.pth \
    --work-dir $WORK/test_student
$PY - "$WORK" <<'PYEOF'
import json, re, sys
work = sys.argv[1]
record = json.load(open(f'{work}/pm/pm_structure.json'))
print('\n=== Prune-and-Merge structure (keep_rate={keep_rate}, prune_rate={prune_rate}, '
      'allocation={allocation}) ==='.format(**record['settings']))
print(record['table'])
base = json.load(open(f'{work}/flops_baseline.json'))
pm = json.load(open(f'{work}/flops_pm.json'))
g0 = base['flops']['total'] / 1e9
g1, g2 = pm['flops_mr_counted']['total'] / 1e9, pm['flops_mr_not_counted']['total'] / 1e9
print('\n=== GFLOPs at 512x512 (mmengine.analysis, 1 multiply-add = 1 FLOP) ===')
print(f'baseline  : {g0:.3f} GFLOPs, {base["params"]["total"] / 1e6:.2f} M params')
print(f'compressed: {g1:.3f} GFLOPs with M/R counted ({100 * (1 - g1 / g0):.1f}% fewer), '
      f'{g2:.3f} without ({100 * (1 - g2 / g0):.1f}% fewer), '
      f'{pm["params"]["total"] / 1e6:.2f} M params')
def last(path, pattern):
    lines = [l for l in open(path) if re.search(pattern, l)]
    return lines[-1].strip() if lines else f'(not found in {path})'
print('\n=== mIoU on the 8-image sample split (smoke test: 20 + 10 iterations, not a result) ===')
print('teacher (uncompressed):', last(f'{work}/test_teacher.log', 'Test metrics'))
print('student (compressed)  :', last(f'{work}/test_student.log', 'Test metrics'))
PYEOF
echo "demo: [5/5] every method at 70% and 60% of the GFLOPs on the demo model (training-free)"
run $WORK/compare.log $PY tools/analysis_tools/compare_methods.py $BASE_CFG \
    $WORK/baseline/iter_20.pth --gflops 0.7 0.6 --val-images 8 --score-iters 4 \
    --batch-size 1 --data-root $DATA --out $WORK/compare
cat $WORK/compare/compare.md
echo
echo "demo: the accuracy columns of a model trained for 20 iterations are smoke numbers;" \
     "GFLOPs and latency are real."
echo "demo: plot $WORK/compare/compare.png; logs and checkpoints under $WORK/"
