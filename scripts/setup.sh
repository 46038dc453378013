#!/usr/bin/env bash
# Install attnc (editable) and the extras asked for. Safe to run again: it does nothing when the install is
# already in place for this pyproject.toml.
#   bash scripts/setup.sh                   # attnc and its test tools (the `test` extra)
#   bash scripts/setup.sh --extras ''       # attnc alone;  --extras test,hf  adds the transformers integration
#   PYTHON=/path/to/python bash scripts/setup.sh   # to choose the interpreter
#
# Which Python: $PYTHON, else `python` (or `python3`) on PATH. When that interpreter is externally managed
# (PEP 668: Debian's and Ubuntu's system Python refuse `pip install`) and no virtual environment is active,
# everything goes into a virtual environment in the checkout, .venv, created on first use. Sourcing this
# file (as test.sh and demo.sh do) defines `setup_choose_python`, which makes that choice, and runs nothing.
set -euo pipefail

SETUP_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SETUP_VENV="$SETUP_REPO/.venv"

setup_say() { echo "setup: $*" >&2; }
setup_fail() { echo "setup: $*" >&2; exit 1; }

# "venv", "managed" or "free": whether interpreter $1 runs in a virtual environment, refuses installs under
# PEP 668 (an EXTERNALLY-MANAGED file in its stdlib directory), or neither.
setup_python_kind() {
  "$1" - <<'PY'
import os, sys, sysconfig
if sys.prefix != sys.base_prefix:
    print("venv")
elif os.path.isfile(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")):
    print("managed")
else:
    print("free")
PY
}

# Prints the interpreter to install into and run with, given the one found ($1): itself, unless it is
# externally managed outside an active virtual environment; then .venv's, created if needed.
setup_python() {
  local python="$1" kind
  kind="$(setup_python_kind "$python")" || setup_fail "$python does not run"
  if [[ "$kind" != managed || -n "${VIRTUAL_ENV:-}" ]]; then
    echo "$python"
    return
  fi
  if [[ -x "$SETUP_VENV/bin/python" ]]; then
    setup_say "$python is externally managed (PEP 668); using the virtual environment $SETUP_VENV"
  else
    setup_say "$python is externally managed (PEP 668): creating a virtual environment in $SETUP_VENV and" \
      "installing there (activate it with: source .venv/bin/activate)"
    local log
    if ! log="$("$python" -m venv "$SETUP_VENV" 2>&1)"; then
      rm -rf "$SETUP_VENV"  # half made: the next run must not take it for a working one
      echo "$log" >&2
      setup_fail "$python cannot create a virtual environment (its venv or ensurepip module is missing). Install" \
        "your distribution's venv package for this Python, e.g. 'sudo apt install python3-venv'" \
        "(or python$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')-venv)," \
        "or activate a virtual environment of your own, then run this again"
    fi
  fi
  echo "$SETUP_VENV/bin/python"
}

# The interpreter to use: $PYTHON, else python or python3 on PATH, passed through setup_python.
setup_choose_python() {
  local found="${PYTHON:-$(command -v python || command -v python3 || true)}"
  [[ -n "$found" ]] || setup_fail "no python on PATH (set PYTHON=/path/to/python)"
  setup_python "$found"
}

# Python modules that must import for the extras in $1 (comma-separated), besides attnc itself.
setup_modules() {
  local modules="torch triton" extra
  for extra in ${1//,/ }; do
    case "$extra" in
      test) modules+=" pytest hypothesis xdist ruff" ;;
      hf) modules+=" transformers" ;;
      viz) modules+=" matplotlib" ;;
      tune) modules+=" tqdm" ;;
      *) setup_fail "unknown extra '$extra' (pyproject.toml names test, viz, tune, hf)" ;;
    esac
  done
  echo "$modules"
}

# Whether attnc imports from this checkout and every module in $2 imports, with interpreter $1. Run from / so
# that the checkout itself (the current directory) cannot stand in for an install.
setup_installed() {
  (cd / && "$1" - "$SETUP_REPO" $2 <<'PY'
import importlib.util, pathlib, sys
spec = importlib.util.find_spec("attnc")
ours = spec is not None and pathlib.Path(spec.origin).resolve().parents[1] == pathlib.Path(sys.argv[1]).resolve()
sys.exit(0 if ours and all(importlib.util.find_spec(m) for m in sys.argv[2:]) else 1)
PY
  )
}

setup_main() {
  local extras="test"
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --extras) extras="${2?--extras needs a value, e.g. test,hf}"; shift 2 ;;
      --extras=*) extras="${1#--extras=}"; shift ;;
      *) setup_fail "unknown argument '$1' (usage: setup.sh [--extras LIST])" ;;
    esac
  done
  export PIP_ROOT_USER_ACTION=ignore  # containers install as root on purpose
  cd "$SETUP_REPO"
  local python modules stamp want
  python="$(setup_choose_python)"
  modules="$(setup_modules "$extras")"
  # The install is current when this interpreter's stamp for these extras names this exact pyproject.toml.
  read -r stamp want < <("$python" - "$extras" <<'PY'
import hashlib, sys
digest = lambda data: hashlib.sha256(data).hexdigest()[:16]
extras = sys.argv[1].replace(",", "-") or "none"
print(f".cache/setup-{digest(sys.executable.encode())}-{extras}.stamp", digest(open("pyproject.toml", "rb").read()))
PY
  ) || setup_fail "$python does not run"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] && setup_installed "$python" "$modules"; then
    return 0
  fi

  # torch first, and only when missing: this exact spec resolves to the CPU wheel; any other spec pulls a
  # multi-GB CUDA build. An existing torch (CPU or CUDA) is never replaced.
  if ! "$python" -c "import torch" >/dev/null 2>&1; then
    setup_say "installing torch (the CPU build, torch==2.13.0): about 2-3 minutes the first time"
    "$python" -m pip install --progress-bar on "torch==2.13.0" || setup_fail "could not install torch==2.13.0"
  fi
  local target="."
  [[ -n "$extras" ]] && target=".[$extras]"
  setup_say "installing attnc (editable, pip install -e '$target') and its dependencies (triton, sympy, lark," \
    "numpy${extras:+ and the $extras extras}): about a minute"
  "$python" -m pip install --quiet -e "$target" || setup_fail "pip install -e '$target' failed"
  setup_installed "$python" "$modules" || setup_fail "attnc or one of $modules is still not importable after installing"
  mkdir -p .cache
  echo "$want" > "$stamp"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  setup_main "$@"
fi
