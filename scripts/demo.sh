#!/usr/bin/env bash
# Set up (idempotent: attnc alone, without the test tools) and run the attnc demo.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/setup.sh  # defines setup_choose_python: this Python, or .venv's where it is externally managed
PYTHON="$(setup_choose_python)"
export PYTHON

echo "demo: setting up attnc (the first run installs torch (CPU) and triton when missing: about 2-3 minutes;" \
  "later runs start at once)"
bash scripts/setup.sh --extras ''
echo "demo: compiling several variants, running them and checking each against the reference (about a minute" \
  "on a CPU, where kernels run in the Triton interpreter)"
"$PYTHON" examples/demo.py
