"""The CPU default on batches that carry an attention_mask: padded batches, and compiled models given one at all.

    python recipes/experiments/padded_batches.py --out recipes/results/padded-batches.md [--rounds 5] [--threads 1]

The bench's cpu-small model (hidden 512, 4 layers, 8 heads, vocabulary 8,192; fp32, sdpa, the CPU default). Each row
times one workload three ways, interleaved round by round in one process (medians): with the L x L mask the model
took until 2026-12-06 (`alibi_masks.compactable` switched off), with each row's tokens gathered ahead of its padding
(the default now), and without any attention_mask (where the batch has no padding, the plain plan: the target).
Compiled, the model cannot read a mask's values, so an all-ones mask (what tokenizers return) took the L x L path too.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import transformers
from tqdm.auto import tqdm

from alibi_lm import AlibiConfig, AlibiForCausalLM
from alibi_lm.measure import run_interleaved, write_results
from alibi_lm.modeling import alibi_masks

ALWAYS = alibi_masks.compactable


def never(layout) -> bool:
    return False


def workloads(model: AlibiForCausalLM) -> list[tuple[str, Callable, torch.Tensor]]:
    """(name, step(attention_mask or None), the batch's attention_mask) for each row."""
    compiled = torch.compile(model)
    ids_padded = torch.randint(0, 8192, (2, 1024), generator=torch.Generator().manual_seed(0))
    ids_long = torch.randint(0, 8192, (1, 2048), generator=torch.Generator().manual_seed(1))

    def train(forward, ids):
        def step(mask):
            model.zero_grad()
            labels = ids if mask is None else ids.masked_fill(mask == 0, -100)
            forward(ids, attention_mask=mask, labels=labels).loss.backward()

        return step

    def prefill(ids):
        def step(mask):
            with torch.no_grad():
                model(ids, attention_mask=mask, logits_to_keep=1)

        return step

    left_padded = torch.ones_like(ids_padded)
    left_padded[0, :256] = 0
    return [
        ("training step, 2 x 1,024, row 0 left-padded by 256", train(model, ids_padded), left_padded),
        ("prefill, 2 x 1,024, row 0 left-padded by 256", prefill(ids_padded), left_padded),
        (
            "torch.compile training step, 1 x 2,048, all-ones mask",
            train(compiled, ids_long),
            torch.ones_like(ids_long),
        ),
    ]


def run_with(step, mask, plan) -> None:
    alibi_masks.compactable = plan
    step(mask)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="markdown table to write")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's, one per core)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    config = AlibiConfig(vocab_size=8192, hidden_size=512, num_hidden_layers=4, num_attention_heads=8,
                         intermediate_size=2048, train_length=2048)  # fmt: skip
    model = AlibiForCausalLM._from_config(config, attn_implementation="sdpa").train()
    rows = []
    for name, step, mask in tqdm(workloads(model), desc="workloads"):
        ways = {"dense": (mask, never), "gathered": (mask, ALWAYS), "plain": (None, ALWAYS)}
        calls = {way: partial(run_with, step, *arguments) for way, arguments in ways.items()}
        measured = run_interleaved(
            calls, mask.device, repeats=args.rounds, measure_memory=False
        )  # warms up (compiles)
        dense, gathered, plain = (statistics.median(measured[way].times) for way in ways)
        rows.append(
            f"| {name} | {dense:.3f} | {gathered:.3f} | {plain:.3f} | {dense / gathered:.2f}x | {plain / gathered:.2f}x |"
        )
    alibi_masks.compactable = ALWAYS
    write_results(
        args.out,
        "The CPU default with an attention_mask: L x L mask (before) against tokens gathered ahead of padding (now)",
        f"python recipes/experiments/padded_batches.py --out {args.out} --rounds {args.rounds}"
        f"{f' --threads {args.threads}' if args.threads else ''}",
        f"Seconds, medians of {args.rounds} interleaved rounds; 'no mask' is the same batch without its "
        "attention_mask (its padding then attended to), the plain plan's time.",
        "| workload | L x L mask (before), s | gathered (now), s | no mask, s | now ÷ before speed | now ÷ no mask |",
        rows,
    )


if __name__ == "__main__":
    main()
