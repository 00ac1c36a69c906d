"""The CPU default on packed documents: the L x L mask it took until 2026-12-06 (padded ones until 2026-12-07) against
blocks cut at each document.

    python recipes/experiments/packed_documents.py --out recipes/results/packed-documents.md [--rounds 5] [--threads 1]

Packing (transformers' DataCollatorWithFlattening and TRL's padding-free format, which restart `position_ids` at each
document; our `packing: true`, which passes `document_ids`) keeps attention inside each document. The bench's
cpu-small model (hidden 512, 4 layers, 8 heads, vocabulary 8,192; fp32, sdpa, the CPU default). Each row times one
workload three ways, interleaved round by round in one process (medians), with peak memory: with the L x L mask
(`alibi_masks.packed` and `alibi_masks.compactable` switched off), in blocks cut at each document (the default now),
and the same tokens unpacked (one document per row, the same padding: what packing is weighed against).
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import transformers
from torch.nn import functional as F
from tqdm.auto import tqdm

from alibi_lm import AlibiConfig, AlibiForCausalLM
from alibi_lm.measure import run_interleaved, write_results
from alibi_lm.modeling import alibi_masks

ALWAYS = {"packed": alibi_masks.packed, "compactable": alibi_masks.compactable}
MiB = 2**20


def never(layout) -> bool:
    return False


def restarting(lengths: list[int]) -> torch.Tensor:
    """`position_ids` `[1, L]` of documents of these lengths, packed: each counts from 0."""
    return torch.cat([torch.arange(n) for n in lengths])[None]


def documents(lengths: list[int]) -> torch.Tensor:
    """`document_ids` `[1, L]` of documents of these lengths, packed."""
    return torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))[None]


def padded(lengths: list[list[int]], length: int) -> dict[str, torch.Tensor]:
    """`document_ids` and `attention_mask` `[B, length]` of rows packed with documents of these lengths, each row
    padded on the right (as a collator pads to the longest row)."""
    ids = [F.pad(documents(row), (0, length - sum(row)), value=len(row)) for row in lengths]
    mask = [F.pad(torch.ones(1, sum(row), dtype=torch.long), (0, length - sum(row))) for row in lengths]
    return {"document_ids": torch.cat(ids), "attention_mask": torch.cat(mask)}


def workloads(model: AlibiForCausalLM) -> list[tuple[str, Callable[[dict], None], dict, dict]]:
    """(name, step(arguments), the packing arguments, the unpacked arguments) for each row."""
    compiled = torch.compile(model)
    generator = torch.Generator().manual_seed(0)
    short, long, pair = (
        torch.randint(0, 8192, shape, generator=generator) for shape in ((1, 2048), (1, 4096), (2, 2048))
    )
    rows = padded([[700, 600, 500], [1024, 1024]], 2048)
    ones = {"attention_mask": torch.ones_like(short)}

    def train(forward, ids):
        def step(packing):
            model.zero_grad()
            forward(ids, labels=ids, **packing).loss.backward()

        return step

    def score(ids):
        def step(packing):
            with torch.no_grad():
                model(ids, **packing)

        return step

    return [
        (
            "training step, 1 x 2,048: 4 documents of 512",
            train(model, short),
            {"document_ids": documents([512] * 4)},
            {},
        ),
        (
            "training step, 1 x 2,048: 1,536 + 4 x 128",
            train(model, short),
            {"document_ids": documents([1536] + [128] * 4)},
            {},
        ),
        (
            "training step, 1 x 2,048: 16 documents of 128 (position_ids)",
            train(model, short),
            {"position_ids": restarting([128] * 16)},
            {},
        ),
        (
            "training step, 2 x 2,048: 700 + 600 + 500 + 248 padding, 2 x 1,024",
            train(model, pair),
            rows,
            {"attention_mask": rows["attention_mask"]},
        ),
        ("scoring, 1 x 4,096: 8 documents of 512", score(long), {"document_ids": documents([512] * 8)}, {}),
        (
            "torch.compile training step, 1 x 2,048: 4 documents of 512 (position_ids)",
            train(compiled, short),
            {"position_ids": restarting([512] * 4)},
            {},
        ),
        (
            "torch.compile training step, 1 x 2,048: 4 documents of 512 (document_ids, all-ones attention_mask)",
            train(compiled, short),
            {"document_ids": documents([512] * 4), **ones},
            ones,
        ),
    ]


def run_with(step, arguments, plans: dict) -> None:
    for name, plan in plans.items():
        setattr(alibi_masks, name, plan)
    step(arguments)


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
    for name, step, packing, unpacked in tqdm(workloads(model), desc="workloads"):
        off = dict.fromkeys(ALWAYS, never)
        ways = {"dense": (packing, off), "blocked": (packing, ALWAYS), "unpacked": (unpacked, ALWAYS)}
        calls = {way: partial(run_with, step, *arguments) for way, arguments in ways.items()}
        measured = run_interleaved(calls, torch.device("cpu"), repeats=args.rounds)  # warms up (compiles)
        dense, blocked, unpacked = (statistics.median(measured[way].times) for way in ways)
        memory = " | ".join(f"{measured[way].peak_bytes / MiB:,.0f}" for way in ("dense", "blocked"))
        rows.append(
            f"| {name} | {dense:.3f} | {blocked:.3f} | {unpacked:.3f} | {dense / blocked:.2f}x "
            f"| {unpacked / blocked:.2f}x | {memory} |"
        )
    run_with(lambda arguments: None, {}, ALWAYS)
    write_results(
        args.out,
        "The CPU default on packed documents: L x L mask (before) against blocks cut at each document (now)",
        f"python recipes/experiments/packed_documents.py --out {args.out} --rounds {args.rounds}"
        f"{f' --threads {args.threads}' if args.threads else ''}",
        f"Seconds, medians of {args.rounds} interleaved rounds; 'unpacked' is the same tokens as one document per row "
        "(the plain plan, or the same padding compacted). Peak memory: what the step allocates above what is live "
        "before it (torch's profiler).",
        "| workload | L x L mask (before), s | blocks (now), s | unpacked, s | now ÷ before speed | now ÷ unpacked "
        "| peak MiB before | peak MiB now |",
        rows,
    )


if __name__ == "__main__":
    main()
