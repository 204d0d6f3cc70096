#!/usr/bin/env bash
# Create (or update) .venv with the pinned PyTorch and this package in editable mode.
# Idempotent: a second run installs nothing new. Set PYTHON to choose the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# Pinned for development and CI; setup.py declares the ranges users may install.
.venv/bin/python -m pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,tensorboard,nriqa,lsun,face]'
