"""`generate(cache_implementation="static")` on windowed ALiBi: the static cache generate builds against a full one.

    python recipes/experiments/static_sliding_cache.py [--tokens 8192] [--out recipes/results/static-sliding-cache.md]

One random-weight model (hidden 128, 2 layers, 8 heads, fp32; windowed at T = 8, so the widest head sees 2,048
tokens back) generates `--tokens` greedy tokens after a 64-token prompt, twice in one process: with the static cache
generate builds for it (transformers' sliding static layers, 2,049 tokens each) and with a full `StaticCache` of
prompt + tokens built beforehand, as it was built before 2026-12-07 (a cache you pass is left as it is). It prints
the cache's bytes, tokens/s and whether the tokens agree.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from transformers import StaticCache

from alibi_lm import AlibiConfig, AlibiForCausalLM
from alibi_lm.machine import describe


def cache_mib(cache) -> float:
    return sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values)) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    config = AlibiConfig(
        vocab_size=512,
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=8,
        intermediate_size=256,
        alibi_window_cutoff=8.0,
    )
    model = AlibiForCausalLM(config).eval()
    prompt = torch.randint(0, 512, (1, 64))
    options = dict(max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=False, pad_token_id=0)
    rows, sequences = [], []
    for name in ("built by generate", "full StaticCache"):
        kwargs = dict(cache_implementation="static") if name == "built by generate" else {}
        if not kwargs:
            kwargs["cache"] = StaticCache(config=config, max_cache_len=64 + args.tokens)
        start = time.perf_counter()
        with torch.no_grad():
            out = model.generate(prompt, return_dict_in_generate=True, **options, **kwargs)
        seconds = time.perf_counter() - start
        layer = out.past_key_values.layers[0]
        sequences.append(out.sequences)
        rows.append(
            f"| {name} | {type(layer).__name__} | {layer.max_cache_len:,} | {cache_mib(out.past_key_values):.1f} | "
            f"{args.tokens / seconds:.1f} |"
        )
    lines = [
        f"{args.tokens:,} greedy tokens after a 64-token prompt, windowed ALiBi (T = 8: 2,048 tokens back), "
        f"`python recipes/experiments/static_sliding_cache.py --tokens {args.tokens}`.",
        f"Machine: {describe()}, torch {torch.__version__}.",
        "",
        "| static cache | layers | tokens per layer | cache (MiB) | tokens/s |",
        "|---|---|---|---|---|",
        *rows,
        "",
        f"Greedy tokens: {'identical' if torch.equal(*sequences) else 'DIFFERENT'}.",
    ]
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
