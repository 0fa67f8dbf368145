#!/usr/bin/env bash
# Creates ./.venv (Python 3.11) and installs nnunet_ccesemi with its test extras.
# PYTHON=python3.x to choose the interpreter; EDITABLE=1 for a development (pip install -e) install.
set -euo pipefail
cd "$(dirname "$0")"
python=${PYTHON:-python3.11}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# nnU-Net pulls in torchvision: install the matching pair first, or pip fetches a different torch (GBs)
.venv/bin/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
if [ "${EDITABLE:-0}" = 1 ]; then
  .venv/bin/python -m pip install --quiet -e '.[test]'
else
  .venv/bin/python -m pip install --quiet '.[test]'
fi
echo "Installed nnunet_ccesemi into $(pwd)/.venv"
