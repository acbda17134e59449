#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian-like machine with Python 3.11: the virtualenv in .venv with the
# project and its dev, demo, cluster, tracking and distributed extras (the tests run real Ray and SLURM
# sweeps, DDP ranks, and log to MLflow and TensorBoard), the Fashion-MNIST files the demo is built from,
# and Chromium with its driver (the blend report's browser test). (SLURM itself: scripts/slurm.sh, started
# by the tests.)
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
  .venv/bin/python -m pip install --quiet -e ".[dev,demo,cluster,tracking,distributed]"
  rm -f .venv/.installed-* && touch "$stamp"
fi

# Debian packages: the demo's Fashion-MNIST files, and the browser the report's test drives
fmnist=/usr/share/datasets/fashion-mnist
missing=()
[ -f "$fmnist/t10k-labels-idx1-ubyte.gz" ] || missing+=(dataset-fashion-mnist)
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
if [ ${#missing[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null; then
    echo "setup: installing Debian's ${missing[*]}"
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "setup: no apt-get: install ${missing[*]} yourself. Fashion-MNIST: put the four idx .gz files" \
      "(github.com/zalandoresearch/fashion-mnist, data/fashion) in $fmnist, or set demo.source=DIR when running" \
      "pipeline.prepare_demo; without chromium the report's browser test is skipped" >&2
  fi
fi
