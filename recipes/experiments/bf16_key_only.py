"""Which bf16 heads run key-only on the CPU: blocks against the key-only bias for steep heads, side by side.

    python recipes/experiments/bf16_key_only.py --out recipes/results/bf16-key-only-amd.md [--rounds 9] [--threads 2]

In bf16 the CPU default runs a head whose window only drops silenced keys fused with the key-only bias (its scores
reach e^-4096, their products denormal) where the CPU's bf16 products treat denormals as zero and blocks would not
halve the head's work (`alibi_blocked.runs_key_only`), and in blocks elsewhere. This times both plans on one CPU,
interleaved round by round with the no-bias model: the bench's `cpu-small` model (hidden 512, 4 layers, 8 heads,
vocabulary 8,192), a training step at 1 x 2,048 tokens and a 4,096-token prefill, bf16 weights and bf16 autocast.
The header names the CPU and which bf16 instructions torch finds on it (AVX512-BF16, AMX tiles).
"""

from __future__ import annotations

import argparse
import statistics
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from unittest import mock

import torch
import transformers

from alibi_lm import AlibiConfig, AlibiForCausalLM
from alibi_lm.measure import run_interleaved, write_results
from alibi_lm.modeling import alibi_blocked

SIZE = dict(vocab_size=8192, hidden_size=512, num_hidden_layers=4, num_attention_heads=8, intermediate_size=2048)
LENGTH = 2048
PRECISIONS = {"bf16 weights": (torch.bfloat16, None), "bf16 autocast": (torch.float32, torch.bfloat16)}
PLANS = {"key-only": (torch.bfloat16,), "blocks": ()}  # alibi_blocked.DENORMAL_FREE_DTYPES under each plan


def step(model, ids: torch.Tensor, kind: str, autocast: torch.dtype | None, plan: tuple | None) -> None:
    """One training step or prefill of `model`, with bf16 counted as denormal-free (key-only) or not (blocks)."""
    rule = mock.patch.object(alibi_blocked, "DENORMAL_FREE_DTYPES", plan) if plan is not None else nullcontext()
    precision = torch.autocast("cpu", autocast) if autocast is not None else nullcontext()
    with rule:
        if kind == "train":
            model.train()
            with precision:
                loss = model(ids, labels=ids).loss
            loss.backward()
            model.zero_grad(set_to_none=True)
        else:
            model.eval()
            with torch.no_grad(), precision:
                model(ids, logits_to_keep=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="markdown table to write")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    inputs = {
        "train": torch.randint(0, SIZE["vocab_size"], (1, LENGTH), generator=torch.Generator().manual_seed(0)),
        "prefill": torch.randint(0, SIZE["vocab_size"], (1, 2 * LENGTH), generator=torch.Generator().manual_seed(1)),
    }
    rows = []
    for precision, (dtype, autocast) in PRECISIONS.items():
        models = {}
        for encoding in ("alibi", "none"):
            torch.manual_seed(0)
            config = AlibiConfig(**SIZE, train_length=LENGTH, position_encoding=encoding)
            models[encoding] = AlibiForCausalLM(config).to(dtype)
        for kind, ids in inputs.items():
            calls = {f"ALiBi, {plan}": partial(step, models["alibi"], ids, kind, autocast, rule)
                     for plan, rule in PLANS.items()}  # fmt: skip
            calls["no bias"] = partial(step, models["none"], ids, kind, autocast, None)
            measured = run_interleaved(calls, ids.device, repeats=args.rounds, warmup=2, measure_memory=False)
            seconds = {name: statistics.median(result.times) for name, result in measured.items()}
            for name, value in seconds.items():
                ratio = seconds["no bias"] / value
                rows.append(f"| {precision} | {kind} 1 x {ids.shape[1]:,} | {name} | {value:.3f} | {ratio:.2f}x |")
    machine = (
        f"AVX512-BF16: {'yes' if torch.cpu._is_avx512_bf16_supported() else 'no'}, "
        f"AMX tiles: {'yes' if torch.cpu._is_amx_tile_supported() else 'no'}; "
        f"the default plan here: {'key-only' if alibi_blocked.DENORMAL_FREE_DTYPES else 'blocks'}."
    )
    note = f"{machine} Medians of {args.rounds} interleaved rounds, wall clock; ratio = no-bias time / this time."
    command = f"python recipes/experiments/bf16_key_only.py --out {args.out} --rounds {args.rounds}"
    command += f" --threads {args.threads}" if args.threads is not None else ""
    title = "bf16 on the CPU: steep heads key-only or in blocks"
    write_results(args.out, title, command, note, "| precision | workload | subject | seconds | ratio |", rows)


if __name__ == "__main__":
    main()
