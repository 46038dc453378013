#!/usr/bin/env bash
# Install attnc (editable) and its test tools into the current Python. Safe to run again: it does
# nothing when the install is already in place for this pyproject.toml.
#   PYTHON=/path/to/python bash scripts/setup.sh   # to choose the interpreter
set -euo pipefail
export PIP_ROOT_USER_ACTION=ignore  # containers install as root on purpose
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo="$(pwd)"
fail() { echo "setup: $*" >&2; exit 1; }

PYTHON="${PYTHON:-$(command -v python || command -v python3 || true)}"
[[ -n "$PYTHON" ]] || fail "no python on PATH (set PYTHON=/path/to/python)"
# The install is current when this interpreter's stamp names this exact pyproject.toml.
read -r stamp want < <("$PYTHON" -c 'import hashlib, sys
digest = lambda data: hashlib.sha256(data).hexdigest()[:16]
print(f".cache/setup-{digest(sys.executable.encode())}.stamp", digest(open("pyproject.toml", "rb").read()))') \
  || fail "$PYTHON does not run"

# Run from / so that the checkout itself (the current directory) cannot stand in for an install.
installed() {
  (cd / && "$PYTHON" - "$repo" <<'PY'
import importlib.util, pathlib, sys
spec = importlib.util.find_spec("attnc")
ours = spec is not None and pathlib.Path(spec.origin).resolve().parents[1] == pathlib.Path(sys.argv[1]).resolve()
tools = all(importlib.util.find_spec(m) for m in ("torch", "triton", "pytest", "hypothesis", "xdist", "ruff"))
sys.exit(0 if ours and tools else 1)
PY
  )
}

if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] && installed; then
  exit 0
fi

# torch first, and only when missing: this exact spec resolves to the CPU wheel; any other spec pulls a
# multi-GB CUDA build. An existing torch (CPU or CUDA) is never replaced.
if ! "$PYTHON" -c "import torch" >/dev/null 2>&1; then
  echo "setup: installing torch==2.13.0"
  "$PYTHON" -m pip install --quiet "torch==2.13.0" || fail "could not install torch==2.13.0"
fi

echo "setup: installing attnc (editable) with test extras"
"$PYTHON" -m pip install --quiet -e ".[test]" || fail "pip install -e .[test] failed"
installed || fail "attnc or a test tool is still not importable after installing"
mkdir -p .cache
echo "$want" > "$stamp"
