"""`generate(cache_implementation="static")` on windowed ALiBi: the static cache generate builds against a full one,
eager and compiled.

    python recipes/experiments/static_sliding_cache.py [--tokens 8192] [--out recipes/results/static-sliding-cache.md]

One random-weight model (hidden 128, 2 layers, 8 heads, fp32; windowed at T = 8, so the widest head sees 2,048
tokens back) generates `--tokens` greedy tokens after a 64-token prompt, in one process, one run after the other:

- eager: with the static cache generate builds for it (transformers' sliding static layers, 2,049 tokens each), and
  with a full `StaticCache` of prompt + tokens built beforehand (a cache you pass is left as it is);
- compiled (`compile_config._compile_all_devices`, as generate compiles on a GPU): with the cache generate builds
  (alibi-lm's `StaticWindowLayer`, 2,049 tokens, counted in tensors), with transformers' sliding static layers built
  beforehand (what generate built before 2026-12-08 had it lent them, which it did not: their count is a Python int
  the graph takes as an input, a CUDA graph recorded per value), and with a full `StaticCache` (what it built then).

It prints the cache's bytes, tokens/s (compiled: after a generation past the window that compiles), the graphs
dynamo built, how many of the decoding graph's inputs are ints, and whether the tokens agree with the first run's.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch._dynamo.utils import counters
from torch._inductor.compile_fx import compile_fx
from transformers import CompileConfig, StaticCache

from alibi_lm import AlibiConfig, AlibiForCausalLM
from alibi_lm.machine import describe


class CountingInductor:
    """inductor, recording how many of each graph's inputs are ints (a CUDA graph is recorded per distinct value)."""

    def __init__(self):
        self.int_inputs = []

    def __deepcopy__(self, memo):  # `CompileConfig.to_dict` deep-copies its backend: keep this one
        return self

    def __call__(self, graph_module, example_inputs, **kwargs):
        self.int_inputs.append(sum(isinstance(value, torch.SymInt) for value in example_inputs))
        return compile_fx(graph_module, example_inputs)


def cache_mib(cache) -> float:
    return sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values)) / 2**20


def sliding_static_cache(config: AlibiConfig, kept: int, length: int) -> StaticCache:
    config.sliding_window = kept + 1  # transformers builds its sliding static layers from the config
    try:
        return StaticCache(config=config, max_cache_len=length)
    finally:
        del config.sliding_window


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
    kept, length = model.model.keys_to_keep(), 64 + args.tokens
    prompt = torch.randint(0, 512, (1, 64))
    options = dict(max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=False, pad_token_id=0)
    runs = (
        ("eager", "built by generate", lambda: {"cache_implementation": "static"}),
        ("eager", "full StaticCache", lambda: {"cache": StaticCache(config=config, max_cache_len=length)}),
        ("compiled", "built by generate", lambda: {"cache_implementation": "static"}),
        ("compiled", "transformers' sliding layers", lambda: {"cache": sliding_static_cache(config, kept, length)}),
        ("compiled", "full StaticCache", lambda: {"cache": StaticCache(config=config, max_cache_len=length)}),
    )
    rows, first = [], None
    for mode, name, cache_kwargs in runs:
        backend, compiled = CountingInductor(), {}
        if mode == "compiled":
            compiled["compile_config"] = CompileConfig(backend=backend)
            compiled[
                "compile_config"
            ]._compile_all_devices = True  # generate compiles only on accelerators unless told
            torch._dynamo.reset()
        counters.clear()
        with torch.no_grad():
            if compiled:  # compiles the decoding steps, outside the clock: past the window, for the same caches
                warm_up = {**options, "max_new_tokens": kept + 16, "min_new_tokens": kept + 16}
                model.generate(prompt, **warm_up, **compiled, **cache_kwargs())
            start = time.perf_counter()
            out = model.generate(prompt, return_dict_in_generate=True, **options, **compiled, **cache_kwargs())
        seconds = time.perf_counter() - start
        first = out.sequences if first is None else first
        layer = out.past_key_values.layers[0]
        graphs = counters["stats"]["unique_graphs"] if compiled else "-"
        ints = " + ".join(map(str, backend.int_inputs)) if compiled else "-"
        rows.append(
            f"| {mode} | {name} | {type(layer).__name__} | {layer.max_cache_len:,} | {cache_mib(out.past_key_values):.1f} "
            f"| {args.tokens / seconds:.1f} | {graphs} | {ints} | {'yes' if torch.equal(out.sequences, first) else 'NO'} |"
        )
        print(rows[-1], flush=True)
    lines = [
        f"{args.tokens:,} greedy tokens after a 64-token prompt, windowed ALiBi (T = 8: 2,048 tokens back), "
        f"`python recipes/experiments/static_sliding_cache.py --tokens {args.tokens}`.",
        f"Machine: {describe()}, torch {torch.__version__}. Compiled: inductor, generate's default `CompileConfig`"
        " (dynamic shapes where a value changes); compiled tokens/s after a generation past the window that compiles.",
        "",
        "| generate | static cache | layers | tokens per layer | cache (MiB) | tokens/s | graphs | int inputs per graph "
        "| same tokens |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
