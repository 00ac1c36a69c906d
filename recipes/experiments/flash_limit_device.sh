#!/usr/bin/env bash
# Issue 22's GPU measurements (recipes/experiments/flash_limit.py) in one call on a lent device machine, whose image
# has torch 2.11 and transformers 5.17: transformers 5.24 comes carried as a wheel in .whl/ (ignored by git).
#
#   here, once:  mkdir -p .whl && pip download --no-deps -d .whl transformers==5.24.0
#   device:      run(command="bash recipes/experiments/flash_limit_device.sh", carry=[".whl"], timeout_s=580)
#   a second call, if the first ran out of time: FLASH_LIMIT_SECTIONS="tables lengths" bash ...
set -euo pipefail
cd "$(dirname "$0")/../.."
work=$(mktemp -d)
pip install -q --no-deps --target "$work/deps" .whl/transformers-5.24.0-*.whl
pip install -q --no-deps --no-build-isolation --target "$work/package" .
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
# FLASH_LIMIT_SECTIONS is split into words on purpose: one section name per word.
# shellcheck disable=SC2086
PYTHONPATH="$work/package:$work/deps" python recipes/experiments/flash_limit.py \
  --out "${OUT:-recipes/results}/flash-limit" --sections ${FLASH_LIMIT_SECTIONS:-exactness alone tables lengths}
