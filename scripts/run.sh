#!/usr/bin/env bash
# Quickstart: set up .venv if needed, then run the jobs.
#   ./scripts/run.sh                     preprocess the embedded synthetic data (once), train the
#                                        scratch CNN on it and evaluate it, on a local Ray
#   ./scripts/run.sh JOB [ARGS...]       run jobs/JOB.py with ARGS (preprocess, train, evaluate, predict)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
if [ $# -gt 0 ]; then
  job="$1"; shift
  [ -f "jobs/$job.py" ] || { echo "error: no job '$job' (jobs: $(cd jobs && ls *.py | sed 's/\.py$//' | tr '\n' ' '))" >&2; exit 2; }
  exec "$VENV/bin/python" "jobs/$job.py" "$@"
fi
if [ ! -f outputs/shards/synthetic/manifest.json ]; then
  "$VENV/bin/python" jobs/preprocess.py
fi
"$VENV/bin/python" jobs/train.py
exec "$VENV/bin/python" jobs/evaluate.py --run outputs/runs/scratch_cnn
