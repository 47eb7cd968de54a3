#!/usr/bin/env bash
# One command from a fresh clone: install, write the built-in demo dataset into ./dataset (when it
# holds no images), train a short run on it, and segment one test image.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup-env.sh requirements.txt
.venv/bin/python segmenter.py --demo --data-dir ./dataset \
    --checkpoint-file ./demo/unet_demo.params --log-dir ./logs \
    --image-size 128 --base-channels 8 --depth 3 --norm batch \
    --batch-size 4 --epoch-size 48 --num-epochs 8 --learning-rate 0.003 "$@"
.venv/bin/python evaluate.py --image ./dataset/test/image/0.png \
    --network-param ./demo/unet_demo.params --output ./demo/0_mask.png --overlay
echo "segmented dataset/test/image/0.png: mask ./demo/0_mask.png, overlay ./demo/0_overlay.png"
