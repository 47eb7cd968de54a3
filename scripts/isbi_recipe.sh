#!/usr/bin/env bash
# The documented way to train on ISBI 2012 (issue 9): train a U-Net on a 2-core CPU within an hour,
# then score it on the validate slices. See docs/records/quality.md for the measured scores and the levers.
#
# Usage: scripts/isbi_recipe.sh [SEGMENTER FLAGS...]
#   Extra flags go to segmenter.py after the recipe's own, so they win: e.g. --time-limit 3 for a
#   short check.
# Environment (defaults in brackets):
#   DATA_DIR   dataset root with train/ and validate/ [../shared/data/isbi2012]
#   OUT_DIR    checkpoint, TensorBoard logs and predictions [runs/isbi_recipe]
#   THRESHOLD  cell-probability threshold of the evaluation [0.5]
#   OVERLAP    overlap of neighbouring evaluation tiles in pixels [128, half the tile]
#   TTA        1: average the 8 flips/rotations at evaluation, 0: single pass [1]
#   SPLIT_CELLS 1: separate touching cells by a seeded watershed (evaluate.py --split-cells),
#              0: threshold only, as the reference [1]
#   MODELS     N > 1: train N models side by side (seeds 0..N-1, one OpenMP thread each unless
#              OMP_NUM_THREADS is set) into OUT_DIR/model-SEED/, and evaluate their ensemble
#              (probabilities averaged) [1]
#   PYTHON     interpreter [.venv/bin/python]
#   TRAIN      0: train nothing, evaluate the checkpoints already in OUT_DIR again (a lever of
#              the evaluation measured on models already trained) [1]
#   CHECKPOINTS with TRAIN=0, the checkpoint files in OUT_DIR to evaluate, several averaging their
#              probabilities, e.g. "unet.params unet-last.params" [unet.params]
#   PREDICTIONS folder in OUT_DIR for the predictions and metrics [predictions]
#   EVAL_FLAGS extra flags for evaluate.py, e.g. "--merge-threshold 0.4" []
# Writes OUT_DIR/unet.params (best validation Dice; OUT_DIR/model-SEED/unet.params with MODELS > 1,
# where a --seed flag would give every model that one seed), OUT_DIR/predictions/metrics.json (pixel
# error, Dice, IoU, adapted Rand error as predicted and after border thinning, the ISBI challenge's
# pixel error (1 - best F-score), per validate slice and mean) and overlays beside the masks.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
data_dir="${DATA_DIR:-../shared/data/isbi2012}"
out_dir="${OUT_DIR:-runs/isbi_recipe}"
threshold="${THRESHOLD:-0.5}"
overlap="${OVERLAP:-128}"
python="${PYTHON:-.venv/bin/python}"
predictions="${PREDICTIONS:-predictions}"
eval_flags=()
[[ "${TTA:-1}" == 1 ]] && eval_flags+=(--tta)
[[ "${SPLIT_CELLS:-1}" == 1 ]] && eval_flags+=(--split-cells)
read -r -a extra_eval_flags <<< "${EVAL_FLAGS:-}"
eval_flags+=(${extra_eval_flags[@]+"${extra_eval_flags[@]}"})
# One OpenMP thread per physical core unless OMP_NUM_THREADS is set (unet/core/threads.py); where
# other jobs share the cores, OMP_NUM_THREADS=1 is up to 4x faster (threads spin waiting for each
# other; docs/records/quality.md).

models="${MODELS:-1}"
if ! [[ "$models" =~ ^[1-9][0-9]*$ ]]; then
    echo "isbi_recipe.sh: MODELS must be a positive integer, got '$models'" >&2
    exit 2
fi

# The recipe; the checkpoint, the log folder and the caller's flags (which win) come after.
recipe=("$python" segmenter.py --data-dir "$data_dir"
    --image-size 256 --base-channels 16 --depth 4 --norm batch
    --batch-size 2 --epoch-size 300 --num-epochs 100 --num-workers 1
    --optimizer adam --learning-rate 0.001 --lr-decay 0.3 --lr-decay-epoch 20,28
    --time-limit 55 --no-histograms --log-images 1)

checkpoints=()
if [[ "${TRAIN:-1}" == 0 ]]; then
    read -r -a names <<< "${CHECKPOINTS:-unet.params}"
    for name in "${names[@]}"; do
        if [[ ! -f "$out_dir/$name" ]]; then
            echo "isbi_recipe.sh: TRAIN=0 but no checkpoint $out_dir/$name" >&2
            exit 2
        fi
        checkpoints+=("$out_dir/$name")
    done
elif [[ "$models" == 1 ]]; then
    "${recipe[@]}" --checkpoint-file "$out_dir/unet.params" --log-dir "$out_dir/logs" "$@"
    checkpoints=("$out_dir/unet.params")
else
    # Side by side, one thread each: two 1-thread runs train 2 x 2.9 crops/s on 2 cores, one
    # 2-thread run 5.1 (docs/records/quality.md). Background jobs of a script ignore Ctrl-C, so it is
    # passed on as SIGTERM, on which segmenter.py saves its state and stops (a second SIGTERM,
    # where the whole process group got one too, is ignored while it saves).
    pids=()
    stop() { kill -TERM $(jobs -pr) 2>/dev/null; wait; exit "$1"; }
    trap 'stop 130' INT
    trap 'stop 143' TERM
    for ((seed = 0; seed < models; seed++)); do
        dir="$out_dir/model-$seed"
        mkdir -p "$dir"
        # A simple command: the background job is segmenter.py itself, so $! is its pid.
        OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" "${recipe[@]}" \
            --checkpoint-file "$dir/unet.params" --log-dir "$dir/logs" --seed "$seed" "$@" \
            > "$dir/train.log" 2>&1 &
        pids+=($!)
        checkpoints+=("$dir/unet.params")
    done
    echo "training $models models side by side; logs in $out_dir/model-*/train.log" >&2
    failed=0
    for pid in "${pids[@]}"; do
        wait "$pid" || failed=1
    done
    trap - INT TERM
    if [[ "$failed" == 1 ]]; then
        echo "isbi_recipe.sh: a training run failed; see $out_dir/model-*/train.log" >&2
        exit 1
    fi
fi
"$python" evaluate.py --data-dir "$data_dir" --split validate \
    --network-param "${checkpoints[@]}" --output "$out_dir/$predictions" \
    --threshold "$threshold" --overlap "$overlap" "${eval_flags[@]}" \
    --overlay --probabilities npy --no-progress
