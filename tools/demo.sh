#!/usr/bin/env bash
# The quick start end to end on the optic-disc set (real when downloadable, else synthetic):
# train -> evaluate -> prune 0.3 + retrain -> export both -> latency table.
# Sized for 2 CPU cores (128x128 inputs, 300 iterations); see README for the full-size runs.
set -euo pipefail
PY=${1:-.venv/bin/python}
OUT=${2:-demo_output}
CFG=configs/quick_start/bisenet_optic_disc_128x128_demo.yml
mkdir -p "$OUT"

echo "== 1/5 train BiSeNetV2 ($CFG)"
"$PY" train.py --config "$CFG" --do_eval --save_interval 100 --log_iters 20 --seed 0 \
    --save_dir "$OUT/train"

echo "== 2/5 evaluate best_model"
"$PY" val.py --config "$CFG" --model_path "$OUT/train/best_model/model.pdparams"
