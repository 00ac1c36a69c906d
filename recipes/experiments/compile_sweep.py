"""torch.compile on the CPU over many sequence lengths in one process: graphs built, recompile-limit hits, speed.

    python recipes/experiments/compile_sweep.py --out recipes/results/compile-sweep.md
    python recipes/experiments/compile_sweep.py --traced --out recipes/results/compile-sweep-traced.md

The bench's cpu-demo model (hidden 128, 2 layers, 8 heads, vocabulary 1,024; fp32, sdpa, the CPU default) compiled
once, then prefilled at 16 lengths from 64 to 2,048 tokens (an extrapolation sweep, a server's prompts). Each row: the
first call at that length (compiling, if dynamo does), the median of 5 warm calls against the uncompiled model's (interleaved),
the largest logit difference from it, and dynamo's counters so far. `--traced` traces the blocked plan at every
length, as the model did before 2026-12-06: its choices guarded on the length, so each length compiled anew until
dynamo's limit of 8, after which the whole model ran uncompiled (with one warning in the log).
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial
from pathlib import Path

import torch
import transformers
from tqdm.auto import tqdm

from alibi_lm import AlibiConfig, AlibiForCausalLM
from alibi_lm.measure import compiled_graphs, recompile_limit_hits, run_interleaved, write_results
from alibi_lm.modeling import alibi_attention

LENGTHS = [64, 100, 128, 200, 256, 300, 400, 512, 600, 700, 800, 900, 1024, 1100, 1500, 2048]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traced", action="store_true", help="trace the plan at every length (the old behaviour)")
    parser.add_argument("--out", type=Path, required=True, help="markdown table to write")
    args = parser.parse_args()
    if args.traced:
        alibi_attention.statically_known_true = lambda condition: True  # every length looks fixed to the plan
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    config = AlibiConfig(vocab_size=1024, hidden_size=128, num_hidden_layers=2, num_attention_heads=8,
                         intermediate_size=512, train_length=64)  # fmt: skip
    model = AlibiForCausalLM._from_config(config, attn_implementation="sdpa").eval()
    compiled = torch.compile(model)
    generator = torch.Generator().manual_seed(0)
    rows = []
    with torch.inference_mode():
        for length in tqdm(LENGTHS, desc="lengths"):
            ids = torch.randint(0, 1024, (1, length), generator=generator)
            start = time.perf_counter()
            logits = compiled(ids).logits
            first = time.perf_counter() - start
            difference = (logits - model(ids).logits).abs().max().item()
            calls = {"compiled": partial(compiled, ids), "uncompiled": partial(model, ids)}
            measured = run_interleaved(calls, ids.device, repeats=5, measure_memory=False)
            warm, eager = (statistics.median(measured[name].times) for name in calls)
            rows.append(
                f"| {length} | {first:.2f} | {1000 * warm:.1f} | {1000 * eager:.1f} | {eager / warm:.2f}x "
                f"| {difference:.1e} | {compiled_graphs()} | {recompile_limit_hits()} |"
            )
    plan = "traced at every length (before 2026-12-06)" if args.traced else "the default"
    command = "python recipes/experiments/compile_sweep.py" + (" --traced" if args.traced else "")
    write_results(
        args.out,
        f"torch.compile over 16 lengths, CPU default, blocked plan {plan}",
        f"{command} --out {args.out}",
        "",
        "| length | first call, s | compiled, ms | uncompiled, ms | speedup | max logit diff | graphs | limit hits |",
        rows,
    )


if __name__ == "__main__":
    main()
