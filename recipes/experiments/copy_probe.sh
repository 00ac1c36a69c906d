#!/usr/bin/env bash
# How far back can a model copy? The copy probe (`alibi-lm eval --probe`) on the five encodings. The demo's models
# do not copy, so each encoding gets a copier first: a fresh model with the demo comparison's configuration and
# tokenizer, trained on the demo's text plus synthetic blocks scored only on a repeated span
# (recipes/experiments/train_copier.py). Needs runs/demo-compare (alibi-lm demo --compare; the committed run used the L = 64
# comparison: --block-size 64 --vocab-size 2048 --steps 10000) for the configurations
# and the tokenizer. Writes recipes/results/copy-probe.{json,png,md}. About 35 min on the 2-core machine (the
# committed run trained the copiers two or three at a time, one torch thread each: 30 min).
set -euo pipefail
cd "$(dirname "$0")/../.."
STEPS=${STEPS:-2000}
R=runs/copiers
ENCODINGS="alibi sinusoidal rotary t5 none"
for e in $ENCODINGS; do
    python recipes/experiments/train_copier.py "runs/demo-compare/$e" "$R/$e" --steps "$STEPS"
done
MODELS=$(for e in $ENCODINGS; do printf '%s ' "$R/$e"; done)
# The copiers as language models: perplexity on the held-out text at 1x and 16x L.
alibi-lm eval $MODELS --lengths 64 1024 --json "$R/perplexity.json" --no-progress
# Distance from a repeated token back to its first copy = span + gap: 16, 32, 48 (inside L = 64, where the copiers
# were trained to copy), then 64 ... 1,024.
alibi-lm eval $MODELS --probe --probe-span 16 --probe-gaps 0 16 32 48 64 112 240 496 1008 --probe-samples 32 \
    --json recipes/results/copy-probe.json --plot recipes/results/copy-probe.png --no-progress
python recipes/experiments/summarize_probe.py recipes/results/copy-probe.json "$R" recipes/results/copy-probe.md
