#!/usr/bin/env bash
# One command from a fresh clone: install the test requirements and run the whole test suite.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup-env.sh requirements-dev.txt
set +e
.venv/bin/python -m pytest -q "$@"
status=$?
set -e
if [[ $status -eq 5 ]]; then
    echo "error: pytest collected no tests" >&2
    exit 1
fi
exit $status
