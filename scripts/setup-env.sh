#!/usr/bin/env bash
# Create ./.venv (never touching the system Python) and install REQUIREMENTS into it.
# Usage: source scripts/setup-env.sh [requirements-file]   (default requirements.txt)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
requirements="${1:-requirements.txt}"
python="${PYTHON:-python3}"
if [[ ! -x .venv/bin/python ]]; then
    "$python" -c 'import sys; sys.exit(0 if (3, 10) <= sys.version_info[:2] <= (3, 11) else 1)' || {
        echo "error: $("$python" --version 2>&1) found; unet needs Python 3.10 or 3.11 (mxnet 1.9.1 and numpy 1.23.5)" >&2
        exit 2
    }
    "$python" -m venv .venv
fi
stamp=".venv/.installed-$(basename "$requirements")"
if [[ ! -f "$stamp" || "$requirements" -nt "$stamp" || requirements.txt -nt "$stamp" ]]; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$requirements"
    touch "$stamp"
fi
