"""Ask a served export for a greedy completion and check it against our own model's greedy tokens.

    python recipes/serve/check_server.py --reference runs/alibi-512 --endpoint http://localhost:8000 \
        --model runs/alibi-512-mpt [--prompt "The history of"] [--max-tokens 256]

Works with any OpenAI-compatible `/v1/completions` server: `transformers serve` (tested, tests/test_serve.py),
vLLM and TGI (see recipes/serve/gpu.sh). `--model` is the name the server knows the model by (the folder it was
started with). Exit status 0 when the served text equals the reference's greedy continuation, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request

import torch
from transformers import AutoTokenizer

from alibi_lm.loading import load_model


def served_completion(endpoint: str, model: str, prompt: str, max_tokens: int, timeout: float) -> dict:
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}).encode()
    request = urllib.request.Request(
        f"{endpoint.rstrip('/')}/v1/completions", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - the endpoint is the user's
        return json.loads(response.read())


def reference_completion(reference: str, prompt: str, max_tokens: int) -> tuple[str, int]:
    """Our model's greedy continuation (text, number of prompt tokens), ending at EOS like a server's."""
    model = load_model(reference).eval()
    tokenizer = AutoTokenizer.from_pretrained(reference)
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.no_grad():
        # Up to max_tokens, stopping at the end-of-text token as servers do.
        out = model.generate(ids, max_new_tokens=max_tokens, do_sample=False, pad_token_id=pad)
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True), ids.shape[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", required=True, help="the alibi-lm folder the export was made from")
    parser.add_argument("--endpoint", required=True, help="the server's base URL, e.g. http://localhost:8000")
    parser.add_argument("--model", required=True, help="the model name the server was started with")
    parser.add_argument("--prompt", default="The history of")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args(argv)

    expected, prompt_tokens = reference_completion(args.reference, args.prompt, args.max_tokens)
    reply = served_completion(args.endpoint, args.model, args.prompt, args.max_tokens, args.timeout)
    served = reply["choices"][0]["text"]
    total = prompt_tokens + reply.get("usage", {}).get("completion_tokens", args.max_tokens)
    if served == expected:
        print(f"identical: {args.endpoint} served {args.model}'s greedy continuation, {total} tokens in all")
        return 0
    common = next((i for i, (a, b) in enumerate(zip(served, expected)) if a != b), min(len(served), len(expected)))
    print(
        f"DIFFERENT from character {common}:\n  served:   {served[common : common + 120]!r}\n"
        f"  expected: {expected[common : common + 120]!r}"
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
