#!/usr/bin/env bash
# The ISBI 2012 recipe judged over several seeds (issue 32): scripts/isbi_recipe.sh once per seed,
# one after another (each with the whole machine and its own time budget), then the mean, spread
# and worst seed of V_Rand, V_Info, pixel error, thinned Rand error and Dice on the validate slices.
#
# Usage: scripts/isbi_seeds.sh [SEGMENTER FLAGS...]   (passed to every run, e.g. --ema 0.99)
# Environment (defaults in brackets): SEEDS, the seeds [0 1 2]; OUT_DIR [runs/isbi_seeds], each
# seed in OUT_DIR/seed-S/; and those of isbi_recipe.sh (DATA_DIR, TTA, SPLIT_CELLS, PYTHON, ...).
# A seed whose predictions/metrics.json exists is not run again (delete its folder to redo it).
# Writes OUT_DIR/seeds.md (the table printed) and OUT_DIR/seeds.json.
#
# EVAL_ONLY=NAME measures a lever of the evaluation on the seeds already trained, without
# training: each seed's checkpoints (CHECKPOINTS, default unet.params) are evaluated again with
# EVAL_FLAGS into OUT_DIR/seed-S/predictions-NAME/, then summarized into OUT_DIR/seeds-NAME.md and
# .json. E.g. EVAL_ONLY=merge-0.4 EVAL_FLAGS="--merge-threshold 0.4" scripts/isbi_seeds.sh, or
# EVAL_ONLY=last CHECKPOINTS=unet-last.params scripts/isbi_seeds.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out_dir="${OUT_DIR:-runs/isbi_seeds}"
python="${PYTHON:-.venv/bin/python}"
read -r -a seeds <<< "${SEEDS:-0 1 2}"
lever="${EVAL_ONLY:-}"
if [[ -n "$lever" && ! "$lever" =~ ^[A-Za-z0-9._+-]+$ ]]; then
    echo "isbi_seeds.sh: EVAL_ONLY must be a plain name (letters, digits, . _ + -), got '$lever'" >&2
    exit 2
fi
predictions="predictions${lever:+-$lever}"
summary="$out_dir/seeds${lever:+-$lever}"
if [[ ${#seeds[@]} == 0 ]]; then
    echo "isbi_seeds.sh: SEEDS is empty" >&2
    exit 2
fi
metrics=()
for seed in "${seeds[@]}"; do
    if ! [[ "$seed" =~ ^[0-9]+$ ]]; then
        echo "isbi_seeds.sh: seeds must be non-negative integers, got '$seed'" >&2
        exit 2
    fi
    dir="$out_dir/seed-$seed"
    if [[ -f "$dir/$predictions/metrics.json" ]]; then
        :
    elif [[ -n "$lever" ]]; then
        echo "isbi_seeds.sh: seed $seed evaluated again into $dir/$predictions" >&2
        OUT_DIR="$dir" TRAIN=0 PREDICTIONS="$predictions" bash scripts/isbi_recipe.sh
    else
        echo "isbi_seeds.sh: seed $seed into $dir" >&2
        OUT_DIR="$dir" MODELS=1 bash scripts/isbi_recipe.sh --seed "$seed" "$@"
    fi
    metrics+=("$dir/$predictions/metrics.json")
done
"$python" scripts/seed_summary.py "${metrics[@]}" --json "$summary.json" | tee "$summary.md.tmp"
mv "$summary.md.tmp" "$summary.md"
