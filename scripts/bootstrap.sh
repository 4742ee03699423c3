#!/usr/bin/env bash
# Create (or bring up to date) the project's virtual environment in .venv.
# Sourced by scripts/run.sh and scripts/test.sh; safe to run on its own.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CXR_VENV:-$ROOT/.venv}"
STAMP="$VENV/.cxr-installed"
WANT="$(cat "$ROOT/pyproject.toml" "$ROOT/constraints.txt" | sha256sum | cut -d' ' -f1)"

find_python() {
  for candidate in "${PYTHON:-}" python3.11 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  echo "error: cxr needs Python 3.11 (on Debian: apt-get install python3.11 python3.11-venv)" >&2
  return 1
}

if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  PY="$(find_python)"
  if ! "$PY" -m venv --help >/dev/null 2>&1 || ! "$PY" -c 'import ensurepip' 2>/dev/null; then
    # Debian ships venv's pip bootstrap separately.
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "installing python3-venv with apt-get" >&2
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv "$(basename "$PY")-venv" >/dev/null || true
    else
      echo "error: Python's venv module is missing (on Debian: sudo apt-get install python3.11-venv)" >&2
      exit 1
    fi
  fi
  echo "setting up $VENV (first run: about two minutes, 2.5 GB)" >&2
  "$PY" -m venv "$VENV"
  LOG="$VENV/install.log"
  if ! { "$VENV/bin/python" -m pip install --upgrade pip &&
         "$VENV/bin/python" -m pip install -c "$ROOT/constraints.txt" -e "$ROOT[cpu,test]"; } >"$LOG" 2>&1; then
    tail -n 30 "$LOG" >&2
    echo "error: installing the dependencies failed (full log: $LOG)" >&2
    exit 1
  fi
  echo "$WANT" > "$STAMP"
fi
