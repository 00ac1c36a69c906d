#!/usr/bin/env bash
# Does dropping every bias (attention, MLP, LayerNorm: the MPT subset, which `alibi-lm export --to mpt` needs) cost
# quality? recipes/tiny-cpu.yaml as it is (biases, today's AlibiConfig default) against the same recipe without
# biases, two seeds each, then perplexity at 1-16 x L on the held-out Wikipedia test split. Results:
# recipes/results/bias-free.{json,md}. About 20 minutes on 2 CPU cores.
#   bash recipes/experiments/bias_free.sh [RUNS_DIR]
set -euo pipefail
RUNS=${1:-runs/bias-free}
cd "$(dirname "$0")/../.."
NO_BIAS=(--attention_bias false --mlp_bias false --layer_norm_bias false)
for seed in 0 1; do
  alibi-lm train recipes/tiny-cpu.yaml --output_dir "$RUNS/biases-seed$seed" --seed "$seed" \
    --overwrite_output_dir true --save_strategy no --eval_strategy no --disable_tqdm true --report_to none
  alibi-lm train recipes/tiny-cpu.yaml --output_dir "$RUNS/no-bias-seed$seed" --seed "$seed" "${NO_BIAS[@]}" \
    --overwrite_output_dir true --save_strategy no --eval_strategy no --disable_tqdm true --report_to none
done
alibi-lm eval "$RUNS"/biases-seed0 "$RUNS"/no-bias-seed0 "$RUNS"/biases-seed1 "$RUNS"/no-bias-seed1 \
  --json recipes/results/bias-free.json --no-progress
