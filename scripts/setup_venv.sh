#!/usr/bin/env bash
# Create (once) and activate the virtual environment with torch and this project installed.
# Source it: `source scripts/setup_venv.sh`. NNUNET_EFFICIENT_VENV chooses where the venv lives
# (default: .venv in the repository); an existing venv is reused and only re-installed when
# pyproject.toml changed.
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${NNUNET_EFFICIENT_VENV:-$repo/.venv}"
python_bin="${PYTHON:-python3}"
stamp="$venv/.nnunet_efficient_installed"
wanted="$(sha256sum "$repo/pyproject.toml" | cut -d' ' -f1) $repo"

if [ ! -x "$venv/bin/python" ]; then
    echo "Creating virtual environment in $venv"
    "$python_bin" -m venv "$venv" || return 1 2>/dev/null || exit 1
fi
# shellcheck disable=SC1091
source "$venv/bin/activate"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$wanted" ]; then
    echo "Installing torch and nnunet-efficient into $venv (first run: a few minutes)"
    python -m pip install -q --upgrade pip
    # torch first, at the release nnU-Net's dependencies are tested with here; torchvision is
    # needed by timm, which nnU-Net imports.
    python -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
    python -m pip install -q -e "$repo[test]"
    echo "$wanted" > "$stamp"
fi
