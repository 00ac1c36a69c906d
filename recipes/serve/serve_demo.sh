#!/usr/bin/env bash
# Export the `alibi-lm demo` model as MPT, serve it with `transformers serve` (no remote code), and check that the
# server answers with our own greedy tokens, well past the training length. Writes recipes/results/serve-demo.md.
#
#   alibi-lm demo && bash recipes/serve/serve_demo.sh [runs/demo/alibi]
set -euo pipefail
MODEL=${1:-runs/demo/alibi}
OUT="${MODEL%/}-mpt"
PORT=${PORT:-8765}
HERE="$(cd "$(dirname "$0")" && pwd)"
RESULT="$HERE/../results/serve-demo.md"

alibi-lm export "$MODEL" "$OUT" --to mpt --overwrite
transformers serve "$OUT" --host 127.0.0.1 --port "$PORT" --device cpu > "$OUT.serve.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 180); do curl -sf "http://127.0.0.1:$PORT/health" > /dev/null && break; sleep 1; done

# The prompt: the first 4 x L tokens of the first held-out article that long, so that the whole exchange runs past
# the training length L whenever the model ends its answer (at its end-of-text token, as servers stop).
PROMPT=$(python - "$MODEL" <<'PY'
import sys
from transformers import AutoConfig, AutoTokenizer
from alibi_lm.data import load_offline_wikipedia
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
n = 4 * AutoConfig.from_pretrained(sys.argv[1], trust_remote_code=True).train_length
ids = next(i for text in load_offline_wikipedia(split="test")["text"] if len(i := tokenizer(text)["input_ids"]) > n)
print(tokenizer.decode(ids[:n]))
PY
)
REQUEST=$(python -c "import json,sys; print(json.dumps({'model': sys.argv[1], 'prompt': sys.argv[2], 'max_tokens': 512, 'temperature': 0}))" "$OUT" "$PROMPT")
REPLY=$(curl -s "http://127.0.0.1:$PORT/v1/completions" -H 'Content-Type: application/json' -d "$REQUEST")
CHECK=$(python "$HERE/check_server.py" --reference "$MODEL" --endpoint "http://127.0.0.1:$PORT" --model "$OUT" \
  --prompt "$PROMPT" --max-tokens 512)
echo "$CHECK"

python - "$RESULT" "$MODEL" "$OUT" "$REQUEST" "$REPLY" "$CHECK" <<'PY'
import json, sys, platform
import transformers, torch
result, model, out, request, reply, check = sys.argv[1:]
config = json.load(open(f"{out}/config.json"))
text = json.loads(reply)["choices"][0]["text"]
lines = [
    "# The demo model, exported to MPT and served by `transformers serve`",
    "",
    "Made by (transformers " + transformers.__version__ + ", torch " + torch.__version__ + ", " + platform.machine() + " CPU):",
    "",
    "```bash",
    "alibi-lm demo",
    "bash recipes/serve/serve_demo.sh    # export --to mpt, transformers serve, one request, check_server.py",
    "```",
    "",
    f"`alibi-lm export {model} {out} --to mpt` wrote a `{config['architectures'][0]}` folder (`model_type` "
    f"`{config['model_type']}`, `max_seq_len` {config['max_seq_len']}, no remote code), and `transformers serve {out}` "
    "served it. The request: the first 256 tokens (4 x the training length of 64) of a held-out article, and up "
    "to 512 greedy tokens more:",
    "",
    "```json",
    json.dumps(json.loads(request), indent=2),
    "```",
    "",
    f"The server's completion (usage: {json.dumps(json.loads(reply).get('usage'))}):",
    "",
    "> " + text.strip().replace("\n", "\n> "),
    "",
    "`recipes/serve/check_server.py` against our own model's greedy continuation:",
    "",
    "```",
    check,
    "```",
]
open(result, "w").write("\n".join(lines) + "\n")
print("wrote", result)
PY
