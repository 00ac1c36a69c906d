#!/usr/bin/env bash
# The paper's analysis (Press et al. 2022, section 5) for the five encodings of the demo comparison, 1x to 64x L:
# non-overlapping against sliding-window perplexity, and the loss by position inside 1,024-token chunks.
# Needs runs/demo-compare as committed (L = 64): alibi-lm demo --compare --block-size 64 --vocab-size 2048 --steps 10000
# --multiples 1 2 4 8 16 32 64 --output-dir runs/demo-compare (the demo's defaults before 2026-12-04).
# Writes recipes/results/context/*.json|png and recipes/results/context-analysis.md. ~30 min at one torch thread on
# the 2-core machine (the sliding windows at 2,048 and 4,096 tokens are most of it).
set -euo pipefail
cd "$(dirname "$0")/../.."
R=runs/demo-compare
OUT=recipes/results/context
MODELS="$R/alibi $R/sinusoidal $R/rotary $R/t5 $R/none"
LENGTHS="64 128 256 512 1024 2048 4096"
mkdir -p "$OUT"
# Both modes on the same first 16,384 held-out tokens; sliding stride 32 = L/2.
alibi-lm eval $MODELS --lengths $LENGTHS --max-tokens 16384 --json "$OUT/nonoverlapping.json" --no-progress
alibi-lm eval $MODELS --mode sliding --stride 32 --lengths $LENGTHS --max-tokens 16384 \
    --json "$OUT/sliding32.json" --plot "$OUT/sliding32.png" --no-progress
# The loss at each position of non-overlapping 1,024-token chunks (16x L), the whole held-out split.
alibi-lm eval $MODELS --by-position --lengths 1024 --json "$OUT/by-position.json" --plot "$OUT/by-position.png" \
    --no-progress
python recipes/experiments/summarize_context.py "$OUT" recipes/results/context-analysis.md
