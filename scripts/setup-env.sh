#!/usr/bin/env bash
# Create ./.venv (never touching the system Python), install REQUIREMENTS into it and the project
# itself in editable mode (import unet from any folder; the unet-train and unet-evaluate commands).
# Usage: bash scripts/setup-env.sh [requirements-file]   (default requirements.txt)
# The Python: $PYTHON if set, else python3 when it is 3.10 or 3.11, else python3.11 or python3.10
# from the PATH (mxnet 1.9.1 needs numpy 1.23.5, which has no wheels for Python 3.12 and later).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
requirements="${1:-requirements.txt}"

supported() {   # the interpreter runs and is 3.10 or 3.11
    "$1" -c 'import sys; sys.exit(0 if (3, 10) <= sys.version_info[:2] <= (3, 11) else 1)' \
        > /dev/null 2>&1
}

if [[ ! -x .venv/bin/python ]]; then
    if [[ -n ${PYTHON:-} ]]; then
        supported "$PYTHON" || {
            echo "error: PYTHON=$PYTHON is $("$PYTHON" --version 2>&1 | head -n 1); unet needs Python 3.10 or 3.11 (mxnet 1.9.1 and numpy 1.23.5)" >&2
            exit 2
        }
        python=$PYTHON
    else
        python=
        for candidate in python3 python3.11 python3.10; do
            if supported "$candidate"; then python=$candidate; break; fi
        done
        if [[ -z $python ]]; then
            found=$(python3 --version 2>&1 | head -n 1 || true)
            echo "error: ${found:-no python3} found and no python3.11 or python3.10 on the PATH; unet needs Python 3.10 or 3.11 (mxnet 1.9.1 and numpy 1.23.5): install one (e.g. 'apt-get install python3.11-venv', 'uv python install 3.11' or 'pyenv install 3.11') and run again, or set PYTHON=/path/to/python3.11" >&2
            exit 2
        fi
    fi
    "$python" -m venv .venv
fi
stamp=".venv/.installed-$(basename "$requirements")"
if [[ ! -f "$stamp" || "$requirements" -nt "$stamp" || requirements.txt -nt "$stamp" \
      || pyproject.toml -nt "$stamp" ]]; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -r "$requirements"
    # The project itself, editable (its dependencies are the pins just installed).
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
    touch "$stamp"
fi
