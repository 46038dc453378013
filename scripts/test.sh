#!/usr/bin/env bash
# The project's test command: set up (idempotent), lint, run the test suite. Fails if either fails.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh tests/test_block_mask.py -x`.
# ATTNC_EXTRAS: the extras to install (default `test`; CI uses `test,hf` to run the transformers integration).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh  # defines setup_choose_python: this Python, or .venv's where it is externally managed
PYTHON="$(setup_choose_python)"
export PYTHON

bash scripts/setup.sh --extras "${ATTNC_EXTRAS:-test}"

lint=0
"$PYTHON" -m ruff check . || lint=$?

# attnc turns the Triton interpreter on by itself when no GPU is present; a switch inherited from the
# environment would turn every GPU run into an interpreter run.
unset TRITON_INTERPRET

workers=()
if "$PYTHON" -c "import xdist" >/dev/null 2>&1; then
  workers=(-n 2)
fi
tests=0
"$PYTHON" -m pytest -q ${workers[@]+"${workers[@]}"} "$@" || tests=$?

if [[ $tests -eq 5 ]]; then
  echo "test: pytest collected no tests; that is a failure" >&2
fi
if [[ $lint -ne 0 ]]; then
  echo "test: ruff check failed (exit $lint)" >&2
fi
if [[ $tests -ne 0 ]]; then
  exit "$tests"
fi
exit "$lint"
