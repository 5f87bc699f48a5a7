#!/usr/bin/env bash
# Set up the environment if needed, then run the whole test suite.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck disable=SC1091
source "$repo/scripts/setup_venv.sh"
cd "$repo"
ruff check .
python -m pytest "$@"
