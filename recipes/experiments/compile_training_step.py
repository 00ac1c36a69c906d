"""A CPU training step compiled for one length, compiled for any length, and uncompiled, side by side.

    python recipes/experiments/compile_training_step.py --out recipes/results/compile-training-step.md [--rounds 5]

The bench's cpu-small model (hidden 512, 4 layers, 8 heads, vocabulary 8,192; fp32, sdpa, the CPU default), one
training step (forward, loss, backward) at 1 x 2,048 tokens, medians of interleaved rounds. `dynamic=True` is what a
workload of many lengths gets (dynamo compiles its second length that way): the blocked plan then runs as one opaque
op whose backward runs the plan again, the price of a graph that holds at every length.
"""

from __future__ import annotations

import argparse
import statistics
from functools import partial
from pathlib import Path

import torch
import transformers

from alibi_lm import AlibiConfig, AlibiForCausalLM
from alibi_lm.measure import run_interleaved, train_step, write_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="markdown table to write")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    config = AlibiConfig(vocab_size=8192, hidden_size=512, num_hidden_layers=4, num_attention_heads=8,
                         intermediate_size=2048, train_length=2048)  # fmt: skip
    model = AlibiForCausalLM._from_config(config, attn_implementation="sdpa").train()
    ids = torch.randint(0, 8192, (1, 2048), generator=torch.Generator().manual_seed(0))
    ways = {
        "torch.compile(dynamic=False)": torch.compile(model, dynamic=False),
        "torch.compile(dynamic=True)": torch.compile(model, dynamic=True),
        "uncompiled": model,
    }
    calls = {name: partial(train_step, run, ids) for name, run in ways.items()}
    measured = run_interleaved(calls, ids.device, repeats=args.rounds, warmup=2, measure_memory=False)
    medians = {name: statistics.median(measured[name].times) for name in ways}
    static = medians["torch.compile(dynamic=False)"]
    write_results(
        args.out,
        "A CPU training step, 1 x 2,048 tokens: compiled for one length, for any length, and uncompiled",
        f"python recipes/experiments/compile_training_step.py --out {args.out} --rounds {args.rounds}",
        "",
        "| step | seconds | speed ÷ compiled for one length |",
        (f"| {name} | {spent:.3f} | {static / spent:.2f}x |" for name, spent in medians.items()),
    )


if __name__ == "__main__":
    main()
