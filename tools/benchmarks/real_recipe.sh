#!/usr/bin/env bash
# The main config's real recipe on the ADE20K sample, with time and peak memory (a benchmark,
# not a test: about 20-30 minutes on 2 CPU cores).
#   1. tools/pm_compress.py on configs/pm_segmenter_vit-s_ade20k.py (512x512 crops) with 4 and
#      24 scoring iterations: peak RSS must not grow with the number of iterations;
#   2. the main config trained by 2 processes (tools/dist_train.sh, gloo on CPU): 102 scoring
#      iterations, 2 finetuning iterations, validation on; exit code, wall time, peak RSS.
# The weights are a randomly initialised Segmenter ViT-S (memory and time do not depend on
# them). Usage: bash tools/benchmarks/real_recipe.sh [WORK_DIR]   (default work_dirs/real_recipe)
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
WORK=${1:-work_dirs/real_recipe}
DATA=data/ade20k_sample/ADEChallengeData2016
CFG=configs/pm_segmenter_vit-s_ade20k.py
rm -rf "$WORK" && mkdir -p "$WORK"
$PY tools/dataset_converters/prepare_ade20k_sample.py --out data/ade20k_sample > /dev/null
$PY - "$WORK/segmenter_vit-s_random.pth" <<'PYEOF'
import sys, torch
import mmseg_pm  # noqa: F401
from mmseg_pm.analysis.build import load_segmentor
model = load_segmentor('configs/segmenter_vit-s_ade20k.py')
torch.save(dict(state_dict=model.state_dict()), sys.argv[1])
PYEOF
peak() { grep 'Maximum resident set size' "$1" | awk '{printf "%.0f MiB", $6 / 1024}'; }
for iters in 4 24; do
    /usr/bin/time -v $PY tools/pm_compress.py $CFG "$WORK/segmenter_vit-s_random.pth" \
        --out "$WORK/pm_$iters.pth" --score-iters $iters --data-root $DATA --no-eval \
        > "$WORK/compress_$iters.log" 2> "$WORK/compress_$iters.time"
    echo "pm_compress, $iters scoring iterations: peak RSS $(peak "$WORK/compress_$iters.time")," \
         "wall $(grep 'Elapsed (wall' "$WORK/compress_$iters.time" | awk '{print $NF}')"
done
start=$(date +%s)
set +e
/usr/bin/time -v env PORT=${PORT:-29531} bash tools/dist_train.sh $CFG 2 \
    --work-dir "$WORK/dist" --data-root $DATA --cfg-options \
    load_from="$WORK/segmenter_vit-s_random.pth" train_cfg.max_iters=2 train_cfg.val_interval=2 \
    default_hooks.checkpoint.interval=2 train_dataloader.num_workers=0 \
    train_dataloader.persistent_workers=False val_dataloader.num_workers=0 \
    val_dataloader.persistent_workers=False > "$WORK/dist.log" 2> "$WORK/dist.time"
rc=$?
set -e
echo "2-process main config (102 scoring iterations, 2 iterations, validation): exit code $rc," \
     "wall $(( $(date +%s) - start )) s, peak RSS of the largest process $(peak "$WORK/dist.time")"
grep -h "mIoU" "$WORK"/dist/*/*.log | tail -1 || true
exit $rc
