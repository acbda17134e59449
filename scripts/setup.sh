#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian-like machine with Python 3.11: the virtualenv in .venv with the
# project and its dev, demo, cluster and distributed extras (the tests run real Ray and SLURM sweeps), and the
# Fashion-MNIST files the demo is built from. (SLURM itself: scripts/slurm.sh, started by the tests.)
# Sourced by demo.sh and test.sh; safe to run again (it reinstalls only when pyproject.toml changed).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($python --version)"
  "$python" -m venv .venv
fi
stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "setup: installing the project and its dependencies into .venv (a few minutes the first time)"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".[dev,demo,cluster,distributed]"
  rm -f .venv/.installed-* && touch "$stamp"
fi

fmnist=/usr/share/datasets/fashion-mnist
if [ ! -f "$fmnist/t10k-labels-idx1-ubyte.gz" ]; then
  if command -v apt-get >/dev/null; then
    echo "setup: installing Debian's dataset-fashion-mnist"
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "setup: no apt-get: put the four Fashion-MNIST idx .gz files (github.com/zalandoresearch/fashion-mnist," \
      "data/fashion) in $fmnist, or set demo.source=DIR when running pipeline.prepare_demo" >&2
  fi
fi
