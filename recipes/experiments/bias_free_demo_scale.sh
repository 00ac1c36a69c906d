#!/usr/bin/env bash
# The bias question of recipes/results/bias-free.md at the demo's model size and a longer budget: recipes/tiny-cpu.yaml
# reshaped to the demo's model (L = 64, 2 layers x 128, 8 heads, BPE 2048, batches of 16 x 64) for 5,000 steps, with
# biases (today's default) and without (the MPT subset), seeds 0 and 1; then perplexity at 1-16 x L on the held-out
# Wikipedia test split. Results: recipes/results/bias-free-demo-scale.json. About 25 minutes on 2 CPU cores.
#   bash recipes/experiments/bias_free_demo_scale.sh [RUNS_DIR]
set -euo pipefail
RUNS=${1:-runs/bias-free-demo-scale}
cd "$(dirname "$0")/../.."
SHAPE=(--block_size 64 --num_hidden_layers 2 --num_attention_heads 8 --vocab_size 2048 --intermediate_size 512
  --max_steps 5000 --per_device_train_batch_size 16 --learning_rate 8e-3 --warmup_steps 250 --logging_steps 500)
COMMON=(--overwrite_output_dir true --save_strategy no --eval_strategy no --disable_tqdm true --report_to none)
NO_BIAS=(--attention_bias false --mlp_bias false --layer_norm_bias false)
for seed in 0 1; do
  alibi-lm train recipes/tiny-cpu.yaml --output_dir "$RUNS/biases-seed$seed" --seed "$seed" "${SHAPE[@]}" "${COMMON[@]}"
  alibi-lm train recipes/tiny-cpu.yaml --output_dir "$RUNS/no-bias-seed$seed" --seed "$seed" "${SHAPE[@]}" \
    "${NO_BIAS[@]}" "${COMMON[@]}"
done
alibi-lm eval "$RUNS"/biases-seed0 "$RUNS"/no-bias-seed0 "$RUNS"/biases-seed1 "$RUNS"/no-bias-seed1 \
  --json recipes/results/bias-free-demo-scale.json --no-progress
