#!/usr/bin/env bash
# The quick start end to end on the optic-disc set (real when downloadable, else synthetic):
# train -> evaluate -> prune 0.3 + retrain -> export both -> latency table.
# Sized for 2 CPU cores (128x128 inputs, 300 iterations); see README for the full-size runs.
set -euo pipefail
PY=${1:-.venv/bin/python}
OUT=${2:-demo_output}
CFG=configs/quick_start/bisenet_optic_disc_128x128_demo.yml
mkdir -p "$OUT"
# what tools/demo_summary.py reports: the commit, the machine, its load when the demo started
# and when each stage began (seconds since the epoch), one "key<TAB>value" line each
STAGES="$OUT/demo_stages.tsv"
{
    printf 'commit\t%s%s\n' "$(git rev-parse --short=7 HEAD 2>/dev/null || echo unknown)" \
        "$(git diff --quiet HEAD 2>/dev/null || echo +dirty)"
    printf 'date\t%s\n' "$(date -u +%Y-%m-%d)"
    printf 'cores\t%s\n' "$(nproc)"
    printf 'cpu\t%s\n' "$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | xargs)"
    printf 'load\t%s\n' "$(cut -d' ' -f1 /proc/loadavg 2>/dev/null)"
} > "$STAGES"
stage() { printf 'stage %s\t%s\n' "$1" "$(date +%s)" >> "$STAGES"; }

stage train
echo "== 1/5 train BiSeNetV2 ($CFG)"
"$PY" train.py --config "$CFG" --do_eval --save_interval 100 --log_iters 20 --seed 0 \
    --save_dir "$OUT/train"

stage evaluate
echo "== 2/5 evaluate best_model"
"$PY" val.py --config "$CFG" --model_path "$OUT/train/best_model/model.pdparams"

stage prune
echo "== 3/5 prune 30% of the FLOPs (sensitivity analysis, FPGM), retrain 60 iterations"
"$PY" slim/prune/prune.py --config "$CFG" --model_path "$OUT/train/best_model/model.pdparams" \
    --pruning_ratio 0.3 --retraining_iters 60 --sen_ratios 0.2 0.4 0.6 --sen_eval_num 5 \
    --seed 0 --save_dir "$OUT/pruned"

stage export
echo "== 4/5 export the unpruned model (prune.py exported the pruned one to $OUT/pruned/export)"
"$PY" export.py --config "$CFG" --model_path "$OUT/train/best_model/model.pdparams" \
    --save_dir "$OUT/unpruned_export"

stage latency
echo "== 5/5 latency, Paddle Inference on CPU (oneDNN, 2 threads), input 1x3x512x1024"
"$PY" deploy/python/benchmark.py "$OUT/unpruned_export" "$OUT/pruned/export" \
    --input_shape 1 3 512 1024 --warmup 3 --repeats 10 --cpu_threads 2 --save_dir "$OUT"

stage done
echo "== what it gave (tools/demo_summary.py $OUT)"
"$PY" tools/demo_summary.py "$OUT"
echo "== done: pruning report $OUT/pruned/report.md, sensitivity plot $OUT/pruned/sensitivity.png"
