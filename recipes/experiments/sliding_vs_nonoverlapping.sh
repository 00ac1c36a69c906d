#!/usr/bin/env bash
# Non-overlapping against sliding-window evaluation of the demo ALiBi model, 1x to 64x L (issue 13, the paper's
# section 5 analysis at CPU scale). Needs runs/demo/alibi (alibi-lm demo; the committed run used the L = 64 demo:
# --block-size 64 --vocab-size 2048 --steps 10000 --encodings alibi). ~5.5 min on the 2-core machine.
set -e
cd "$(dirname "$0")/../.."
M=runs/demo/alibi
alibi-lm eval $M --lengths 64 128 256 512 1024 2048 4096 --max-tokens 16384 --json recipes/results/sliding-nonoverlapping.json --no-progress
alibi-lm eval $M --mode sliding --stride 32 --lengths 64 128 256 512 1024 2048 4096 --max-tokens 16384 --json recipes/results/sliding-sliding32.json --no-progress
alibi-lm eval $M --mode sliding --stride 4 --lengths 64 128 256 512 1024 --max-tokens 16384 --json recipes/results/sliding-sliding4.json --no-progress
