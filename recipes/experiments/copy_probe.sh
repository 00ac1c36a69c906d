#!/usr/bin/env bash
# How far back can a model copy? The copy probe (`alibi-lm eval --probe`) on the five encodings, each trained with a
# copy mix: every training block carries a span of L/16 to L/4 random tokens twice (`--repeat-span-fraction 1`), so
# the only way to predict the second copy is to copy. Writes recipes/results/copy-probe.{json,png,md}.
# ~20 min on the 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
STEPS=${STEPS:-3000}
R=runs/probe-models
alibi-lm demo --compare --repeat-span-fraction 1 --steps "$STEPS" --no-generate --output-dir "$R" --overwrite \
    --no-progress
# Distance from a repeated token back to its first copy = span + gap: 16, 32, 48 (inside L = 64), then 64 ... 1,024.
alibi-lm eval $R/alibi $R/sinusoidal $R/rotary $R/t5 $R/none --probe --probe-span 16 \
    --probe-gaps 0 16 32 48 64 112 240 496 1008 --probe-samples 32 \
    --json recipes/results/copy-probe.json --plot recipes/results/copy-probe.png --no-progress
python recipes/experiments/summarize_probe.py recipes/results/copy-probe.json "$R/demo-compare.md" \
    recipes/results/copy-probe.md
