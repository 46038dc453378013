#!/usr/bin/env bash
# Set up (idempotent) and run the attnc demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
python examples/demo.py
