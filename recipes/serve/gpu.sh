#!/usr/bin/env bash
# Serve an exported alibi-lm model with vLLM (tensor parallel) and TGI on a GPU machine, and check each answer
# against our own greedy tokens. Not run in this project's environment (no GPU with vLLM or TGI; see README).
#
#   bash recipes/serve/gpu.sh runs/alibi-512 [tensor-parallel size, default: every GPU]
set -euo pipefail
REFERENCE=${1:?usage: gpu.sh ALIBI_LM_FOLDER [TP]}
TP=${2:-$(nvidia-smi -L | wc -l)}
OUT="${REFERENCE%/}-mpt"
HERE="$(cd "$(dirname "$0")" && pwd)"

alibi-lm export "$REFERENCE" "$OUT" --to mpt --overwrite
MAX_LEN=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['max_seq_len'])" "$OUT/config.json")

wait_for() {  # URL
  for _ in $(seq 1 300); do curl -sf "$1" > /dev/null && return 0; sleep 2; done
  echo "server at $1 did not come up" >&2; return 1
}

# vLLM: MPT is a native model type; ALiBi runs to --max-model-len.
vllm serve "$OUT" --tensor-parallel-size "$TP" --max-model-len "$MAX_LEN" --port 8000 &
VLLM=$!
trap 'kill $VLLM 2>/dev/null || true' EXIT
wait_for http://localhost:8000/health
python "$HERE/check_server.py" --reference "$REFERENCE" --endpoint http://localhost:8000 --model "$OUT"
kill $VLLM; wait $VLLM 2>/dev/null || true

# TGI (Docker): the same folder, sharded over TP GPUs; /v1/completions is its OpenAI-compatible route.
docker run --rm -d --name alibi-tgi --gpus all --shm-size 1g -p 8080:80 -v "$(cd "$(dirname "$OUT")" && pwd)":/data \
  ghcr.io/huggingface/text-generation-inference --model-id "/data/$(basename "$OUT")" --num-shard "$TP" \
  --max-input-tokens $((MAX_LEN - 512)) --max-total-tokens "$MAX_LEN"
trap 'docker stop alibi-tgi > /dev/null 2>&1 || true' EXIT
wait_for http://localhost:8080/health
python "$HERE/check_server.py" --reference "$REFERENCE" --endpoint http://localhost:8080 --model "/data/$(basename "$OUT")"
