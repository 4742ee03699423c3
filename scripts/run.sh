#!/usr/bin/env bash
# Quickstart: set up .venv if needed, then run the jobs on a local Ray.
#   ./scripts/run.sh [--seed N] [--outputs DIR]
#        the whole pipeline on the embedded synthetic data, sized to learn in a few minutes on
#        a laptop's CPU: 1,000 images at 96 px, 5 epochs of the scratch CNN in batches of 16, then the report
#   ./scripts/run.sh --source FOLDER_ZIP_S3_OR_kaggle [--outputs DIR]
#        the same three stages on real chest X-rays, with the settings measured on real
#        images in docs/benchmarks.md (quality): 128 px, up to 30 epochs
#   ./scripts/run.sh JOB [ARGS...]
#        one job: `cxr JOB ARGS` (preprocess, train, tune, evaluate, predict)
# Shards and runs that already exist are reused: a rerun resumes training where it stopped.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then
  job="$1"; shift
  [ -f "jobs/$job.py" ] || { echo "error: no job '$job' (jobs: $(cd jobs && ls *.py | sed 's/\.py$//' | tr '\n' ' '))" >&2; exit 2; }
  exec "$VENV/bin/cxr" "$job" "$@"
fi

seed=0 outputs=outputs source=synthetic
while [ $# -gt 0 ]; do
  case "$1" in
    --seed) seed="${2:?--seed needs a number}"; shift 2 ;;
    --outputs) outputs="${2:?--outputs needs a folder}"; shift 2 ;;
    --source) source="${2:?--source needs a folder, zip, s3:// prefix or kaggle}"; shift 2 ;;
    *) echo "error: unknown option '$1' (options: --seed N, --outputs DIR, --source SRC; or a job name)" >&2; exit 2 ;;
  esac
done
[[ "$seed" =~ ^[0-9]+$ ]] || { echo "error: --seed must be a whole number, got '$seed'" >&2; exit 2; }

# The recipes are the presets cxr/cli/presets/quickstart.yaml and real.yaml (`cxr JOB --config NAME`).
if [ "$source" = synthetic ]; then
  name="quickstart-seed$seed"
  preset=quickstart
  preprocess=(--synthetic-seed "$seed")
  train=(--seed "$seed")
else
  name="real"
  preset=real
  preprocess=(--source "$source")
  [ "$source" = kaggle ] && preprocess+=(--raw-cache "$outputs/raw")
  train=()
fi
shards="$outputs/shards/$name"

staged=
stage() { [ -z "$staged" ] || echo; staged=1; printf '== %s\n$ %s\n' "$1" "${*:2}"; }
cxr="$VENV/bin/cxr"
if [ -f "$shards/manifest.json" ]; then
  staged=1
  printf '== 1/3 preprocess: reusing the shards in %s (delete the folder to make them again)\n' "$shards"
else
  stage "1/3 preprocess" cxr preprocess --config "$preset" "${preprocess[@]}" --output "$shards"
  "$cxr" preprocess --config "$preset" "${preprocess[@]}" --output "$shards"
fi
stage "2/3 train" cxr train --config "$preset" "${train[@]}" --data "$shards" --storage "$outputs/runs" --name "$name"
"$cxr" train --config "$preset" "${train[@]}" --data "$shards" --storage "$outputs/runs" --name "$name"
stage "3/3 evaluate" cxr evaluate --run "$outputs/runs/$name"
exec "$cxr" evaluate --run "$outputs/runs/$name"
