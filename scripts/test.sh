#!/usr/bin/env bash
# Quickstart: set up .venv if needed, then run the test suite (starts its own local Ray and
# SeaweedFS S3 server). Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
exec "$VENV/bin/python" -m pytest "$@"
