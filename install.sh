#!/usr/bin/env bash
# Creates ./.venv (Python 3.11) and installs nnunet_ccesemi with its test extras.
# PYTHON=python3.x to choose the interpreter; EDITABLE=1 for a development (pip install -e) install.
set -euo pipefail
cd "$(dirname "$0")"
python=${PYTHON:-python3.11}
is_python_311() { "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; }
if [ -x .venv/bin/python ] && ! is_python_311 .venv/bin/python; then
  echo "ERROR: ./.venv is not a Python 3.11 environment ($(.venv/bin/python --version 2>&1)); remove it and rerun" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  if ! command -v "$python" >/dev/null || ! is_python_311 "$python"; then
    echo "ERROR: $python is not Python 3.11 (the tested version, for which torch 2.14.1 is installed);" \
         "install it or set PYTHON=/path/to/python3.11" >&2
    exit 1
  fi
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# nnU-Net pulls in torchvision: install the matching pair first, or pip fetches a different torch (GBs);
# the pair is named again below so that the resolver keeps it
torch_pair=(torch==2.14.1 torchvision==0.29.1)
.venv/bin/python -m pip install --quiet "${torch_pair[@]}"
if [ "${EDITABLE:-0}" = 1 ]; then
  .venv/bin/python -m pip install --quiet -e '.[test]' "${torch_pair[@]}"
else
  .venv/bin/python -m pip install --quiet '.[test]' "${torch_pair[@]}"
fi
echo "Installed nnunet_ccesemi into $(pwd)/.venv"
