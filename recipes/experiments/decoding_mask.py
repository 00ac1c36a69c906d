"""Greedy decoding with the decoding step's mask sliced from a kept row, beside the mask computed at every step.

    python recipes/experiments/decoding_mask.py --out recipes/results/decoding-mask.md [--rounds 15]

The bench's two CPU models (cpu-demo: hidden 128, 2 layers, 8 heads, vocabulary 1,024; cpu-small: hidden 512,
4 layers, 8 heads, vocabulary 8,192; fp32, the CPU default), 256 greedy tokens after a 32-token prompt, `generate`
with its dynamic cache. Three subjects per model, timed interleaved in one process: ALiBi as it runs now (each step's
`[1, H, 1, K]` mask a slice of one row per head kept across steps, `alibi_masks.decoding_row`), ALiBi with that
switched off (the mask computed at every step, `decoding_mask`, as until 2026-12-07), and the same model without a
bias. The two ALiBi subjects must give the same tokens.
"""

from __future__ import annotations

import argparse
import statistics
from functools import partial
from pathlib import Path
from unittest import mock

import torch
import transformers

from alibi_lm import AlibiConfig, AlibiForCausalLM
from alibi_lm.measure import generate_tokens, run_interleaved, write_results
from alibi_lm.modeling import alibi_masks

MODELS = {
    "cpu-demo": dict(vocab_size=1024, hidden_size=128, num_hidden_layers=2, num_attention_heads=8, train_length=32),
    "cpu-small": dict(vocab_size=8192, hidden_size=512, num_hidden_layers=4, num_attention_heads=8,
                      intermediate_size=2048, train_length=512),
}  # fmt: skip


def computed_every_step(model, ids: torch.Tensor, tokens: int) -> torch.Tensor:
    """`generate_tokens` with the kept row switched off: every decoding step computes its mask."""
    with mock.patch.object(alibi_masks, "decoding_step", lambda layout: False):
        return generate_tokens(model, ids, tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="markdown table to write")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--tokens", type=int, default=256)
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    rows = []
    for name, sizes in MODELS.items():
        models = {}
        for encoding in ("alibi", "none"):
            torch.manual_seed(0)
            models[encoding] = AlibiForCausalLM(AlibiConfig(**sizes, position_encoding=encoding)).eval()
        ids = torch.randint(1, sizes["vocab_size"], (1, 32), generator=torch.Generator().manual_seed(0))
        calls = {
            "ALiBi, mask sliced from a kept row (now)": partial(generate_tokens, models["alibi"], ids, args.tokens),
            "ALiBi, mask computed each step (before)": partial(computed_every_step, models["alibi"], ids, args.tokens),
            "no bias": partial(generate_tokens, models["none"], ids, args.tokens),
        }
        measured = run_interleaved(calls, ids.device, repeats=args.rounds, warmup=2, measure_memory=False)
        now, before = (measured[key].output for key in list(calls)[:2])
        if not torch.equal(now, before):
            raise SystemExit(f"{name}: the two ALiBi subjects generated different tokens")
        unbiased = statistics.median(measured["no bias"].times)
        for key in calls:
            seconds = statistics.median(measured[key].times)
            per_token = seconds / args.tokens * 1000
            rows.append(f"| {name} | {key} | {per_token:.3f} | {unbiased / seconds:.2f}x |")
    write_results(
        args.out,
        f"Greedy decoding, {args.tokens} tokens after 32: the decoding step's mask sliced from a kept row",
        f"python recipes/experiments/decoding_mask.py --out {args.out} --rounds {args.rounds}",
        f"Medians of {args.rounds} interleaved rounds; the two ALiBi subjects generated the same tokens.",
        "| model | subject | ms per token | speed ÷ no bias |",
        rows,
    )


if __name__ == "__main__":
    main()
