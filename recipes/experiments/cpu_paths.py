"""ALiBi's CPU default against the no-bias model in each way a user trains on the CPU: fp32, bf16 or fp16 weights, bf16
autocast, torch.compile. One process, the two models interleaved round by round.

    python recipes/experiments/cpu_paths.py --out recipes/results/cpu-paths [--threads 2] [--rounds 9]
    python recipes/experiments/cpu_paths.py --small --out /tmp/cpu-paths      # seconds: every path once, tiny

Each row is a training step (forward, loss, backward) of the bench's `cpu-small` model (hidden 512, 4 layers, 8 heads,
vocabulary 8,192) at 1 x 2,048 tokens, and a 4,096-token prefill, timed by the wall clock; the ratio is the no-bias
step's time over ALiBi's (1.00x: as fast). The header names the CPU, threads, whether its bf16 products treat denormals
as zero (AMX tiles or AVX512-BF16, where the CPU default runs more heads fused) and the library versions. Until
2026-12-06 bf16 weights, autocast and compiled models took an L x L mask on the CPU without a word, and so did
attention dropout (a row with that mask switched back on stands beside it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import NamedTuple
from unittest import mock

import torch
import transformers
from tqdm.auto import tqdm

from alibi_lm import AlibiConfig, AlibiForCausalLM
from alibi_lm.machine import describe
from alibi_lm.modeling import alibi_blocked

SIZES = {
    "cpu-small": dict(vocab_size=8192, hidden_size=512, num_hidden_layers=4, num_attention_heads=8, length=2048),
    "small": dict(vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=8, length=600),
}


class Way(NamedTuple):
    """One way to train on the CPU: the weights' dtype, autocast's (or None), compiled or not, attention dropout; and
    `dense`: the L x L mask dense ALiBi took with dropout until 2026-12-06, switched back on for comparison;
    `amx_rule`: steep bf16 heads run key-only where blocks would not halve their work, on any CPU (the rule of CPUs
    with bf16 products)."""

    name: str
    dtype: torch.dtype
    autocast: torch.dtype | None = None
    compiled: bool = False
    dropout: float = 0.0
    dense: bool = False
    amx_rule: bool = False


PATHS = [
    Way("fp32", torch.float32),
    Way("bf16 weights", torch.bfloat16),
    Way("fp16 weights", torch.float16),
    Way("bf16 autocast", torch.float32, torch.bfloat16),
    Way("fp32, torch.compile", torch.float32, compiled=True),
    Way("bf16 autocast, torch.compile", torch.float32, torch.bfloat16, compiled=True),
    Way("fp32, attention dropout 0.1", torch.float32, dropout=0.1),
    Way("fp32, attention dropout 0.1, L x L mask (before 2026-12-06)", torch.float32, dropout=0.1, dense=True),
    Way("bf16 weights, AMX's key-only rule on any CPU", torch.bfloat16, amx_rule=True),
]


def build(position_encoding: str, size: dict, dtype: torch.dtype, compiled: bool, dropout: float):
    torch.manual_seed(0)
    config = AlibiConfig(
        vocab_size=size["vocab_size"], hidden_size=size["hidden_size"], num_hidden_layers=size["num_hidden_layers"],
        num_attention_heads=size["num_attention_heads"], intermediate_size=4 * size["hidden_size"],
        train_length=size["length"], position_encoding=position_encoding, attention_dropout=dropout,
    )  # fmt: skip
    model = AlibiForCausalLM(config).to(dtype)
    return model, (torch.compile(model, fullgraph=True, dynamic=False) if compiled else model)


@contextmanager
def dense_with_dropout(switched_on: bool) -> Iterator[None]:
    """Within it (where switched on), training steps take the L x L mask, as dense ALiBi did with attention dropout
    until 2026-12-06 (without dropout, and so for prefills, the CPU default then was what it is now)."""
    blocked = alibi_blocked.blocked_by_default
    if switched_on:
        alibi_blocked.blocked_by_default = lambda device, dtype: False
    try:
        yield
    finally:
        alibi_blocked.blocked_by_default = blocked


def measure(path: Way, size: dict, rounds: int) -> dict:
    # amx_rule: bf16 counts as denormal-free whatever the CPU (`alibi_blocked.runs_key_only`)
    rule = (
        mock.patch.object(alibi_blocked, "DENORMAL_FREE_DTYPES", (torch.bfloat16,)) if path.amx_rule else nullcontext()
    )
    with rule:
        return measure_within(path, size, rounds)


def measure_within(path: Way, size: dict, rounds: int) -> dict:
    name, dtype, autocast, compiled, dropout, dense, _ = path
    length = size["length"]
    ids = torch.randint(0, size["vocab_size"], (1, length), generator=torch.Generator().manual_seed(0))
    prompt = torch.randint(0, size["vocab_size"], (1, 2 * length), generator=torch.Generator().manual_seed(1))
    models = {encoding: build(encoding, size, dtype, compiled, dropout) for encoding in ("alibi", "none")}

    def context():
        return torch.autocast("cpu", autocast) if autocast is not None else nullcontext()

    def train(model, forward) -> None:
        model.train()
        with context(), dense_with_dropout(dense):
            loss = forward(ids, labels=ids).loss
        loss.backward()
        model.zero_grad(set_to_none=True)

    def prefill(model, forward) -> None:
        model.eval()
        with torch.no_grad(), context():
            forward(prompt, logits_to_keep=1)

    times = {(kind, encoding): [] for kind in ("train", "prefill") for encoding in models}
    warm_up = time.perf_counter()
    for run in (train, prefill):
        for model, forward in models.values():
            run(model, forward)  # compiles, builds the kept patterns
            run(model, forward)
    warm_up = time.perf_counter() - warm_up
    for _ in range(rounds):
        for kind, run in (("train", train), ("prefill", prefill)):
            for encoding, (model, forward) in models.items():
                start = time.perf_counter()
                run(model, forward)
                times[kind, encoding].append(time.perf_counter() - start)
    row = {"path": name, "warm_up_s": round(warm_up, 1)}
    for kind in ("train", "prefill"):
        alibi, none = (statistics.median(times[kind, encoding]) for encoding in ("alibi", "none"))
        row[f"{kind}_alibi_s"], row[f"{kind}_none_s"] = round(alibi, 4), round(none, 4)
        row[f"{kind}_ratio"] = round(none / alibi, 3)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--small", action="store_true", help="a tiny model, one round: checks every path runs")
    parser.add_argument("--paths", default=None, help="names of PATHS to run, separated by ';' (default: all)")
    parser.add_argument("--out", type=Path, required=True, help="folder for cpu-paths.json and cpu-paths.md")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    size, rounds = (SIZES["small"], 1) if args.small else (SIZES["cpu-small"], args.rounds)
    paths = PATHS
    if args.paths is not None:
        wanted = [name.strip() for name in args.paths.split(";")]  # the names hold commas
        unknown = sorted(set(wanted) - {path.name for path in PATHS})
        if unknown:
            parser.error(f"unknown --paths {unknown}; choose from {[path.name for path in PATHS]}")
        paths = [path for path in PATHS if path.name in wanted]
    machine = describe("cpu")
    # (read with getattr so that this script also measures the code before 2026-12-06, which had no such rule)
    bf16_free = "yes" if torch.bfloat16 in getattr(alibi_blocked, "DENORMAL_FREE_DTYPES", ()) else "no"
    versions = f"torch {torch.__version__}, transformers {transformers.__version__}"
    rows = [measure(path, size, rounds) for path in tqdm(paths, desc="paths", unit="path")]
    args.out.mkdir(parents=True, exist_ok=True)
    result = {
        "machine": machine,
        "bf16_denormal_free": bf16_free,
        "versions": versions,
        "size": size,
        "rounds": rounds,
        "rows": rows,
    }
    (args.out / "cpu-paths.json").write_text(json.dumps(result, indent=2) + "\n")
    length = size["length"]
    lines = [
        "# ALiBi's CPU default against the no-bias model, by precision and compilation\n",
        f"{machine}; bf16 products denormal-free (AMX or AVX512-BF16): {bf16_free}; {versions}. "
        f"Model: hidden {size['hidden_size']}, {size['num_hidden_layers']} layers, "
        f"{size['num_attention_heads']} heads, vocabulary {size['vocab_size']}. "
        f"Medians of {rounds} interleaved rounds, wall clock; ratio = no-bias time / ALiBi time.\n",
        f"| path | train 1x{length}: ALiBi s | no bias s | ratio | prefill {2 * length}: ALiBi s | no bias s | ratio "
        "| warm-up s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['path']} | {row['train_alibi_s']:.3f} | {row['train_none_s']:.3f} | {row['train_ratio']:.2f}x "
            f"| {row['prefill_alibi_s']:.3f} | {row['prefill_none_s']:.3f} | {row['prefill_ratio']:.2f}x "
            f"| {row['warm_up_s']} |"
        )
    (args.out / "cpu-paths.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
