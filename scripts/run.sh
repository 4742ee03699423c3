#!/usr/bin/env bash
# Quickstart: set up .venv if needed, then run the preprocessing job (default: the
# embedded synthetic data, local Ray, ./outputs/shards/synthetic). Extra arguments go to the job.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
exec "$VENV/bin/python" jobs/preprocess.py "$@"
