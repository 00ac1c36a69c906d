"""The CPU default's first forward into a static cache: the [B, H, Q, max_cache_len] mask it took until 2026-12-06
against the blocked plan on the prompt's own slots.

    python recipes/experiments/static_cache_prefill.py --out recipes/results/static-cache-prefill.md [--rounds 5]

`generate(..., cache_implementation="static")` (transformers' way to compiled decoding) allocates `max_cache_len` key
slots; in the first forward those after the prompt are empty. The bench's cpu-small model (hidden 512, 4 layers, 8
heads, vocabulary 8,192; fp32, sdpa, the CPU default), greedy, 8 new tokens, one row and a left-padded batch of two.
Each row times three ways, interleaved round by round in one process (medians), with peak memory: the static cache
with the old mask (`alibi_masks.own_slots` switched off), the static cache now, and the dynamic cache (the target).
"""

from __future__ import annotations

import argparse
import statistics
from functools import partial
from pathlib import Path

import torch
import transformers
from tqdm.auto import tqdm

from alibi_lm import AlibiConfig, AlibiForCausalLM
from alibi_lm.measure import run_interleaved, write_results
from alibi_lm.modeling import alibi_masks

OWN_SLOTS = alibi_masks.own_slots
MiB = 2**20


def all_slots(layout):
    return layout


def generate(model, ids, mask, cache: str, plan) -> torch.Tensor:
    alibi_masks.own_slots = plan
    options = {"cache_implementation": "static"} if cache == "static" else {}
    return model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0, **options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="markdown table to write")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    config = AlibiConfig(vocab_size=8192, hidden_size=512, num_hidden_layers=4, num_attention_heads=8,
                         intermediate_size=2048, train_length=2048)  # fmt: skip
    model = AlibiForCausalLM._from_config(config, attn_implementation="sdpa").eval()
    generator = torch.Generator().manual_seed(0)
    one = torch.randint(1, 8192, (1, 4096), generator=generator)
    two = torch.randint(1, 8192, (2, 2048), generator=generator)
    left_padded = torch.ones_like(two)
    left_padded[1, :512] = 0
    workloads = [
        ("1 × 4,096-token prompt", one, torch.ones_like(one)),
        ("2 × 2,048, row 1 left-padded by 512", two, left_padded),
    ]
    rows = []
    for name, ids, mask in tqdm(workloads, desc="workloads"):
        ways = {"before": ("static", all_slots), "now": ("static", OWN_SLOTS), "dynamic": ("dynamic", OWN_SLOTS)}
        calls = {way: partial(generate, model, ids, mask, *arguments) for way, arguments in ways.items()}
        measured = run_interleaved(calls, torch.device("cpu"), repeats=args.rounds)
        same = torch.equal(measured["now"].output, measured["dynamic"].output)
        before, now, dynamic = (statistics.median(measured[way].times) for way in ways)
        memory = " | ".join(f"{measured[way].peak_bytes / MiB:,.0f}" for way in ways)
        rows.append(
            f"| {name} | {before:.3f} | {now:.3f} | {dynamic:.3f} | {before / now:.2f}x | {dynamic / now:.2f}x "
            f"| {memory} | {'yes' if same else 'no'} |"
        )
    alibi_masks.own_slots = OWN_SLOTS
    write_results(
        args.out,
        "generate with a static cache on the CPU default: its first forward's mask (before) against the plan (now)",
        f"python recipes/experiments/static_cache_prefill.py --out {args.out} --rounds {args.rounds}",
        f"Seconds for the whole generate call (prompt and 8 greedy tokens), medians of {args.rounds} interleaved "
        "rounds; peak memory above what is live before it (torch's profiler); 'same tokens': the static cache's now "
        "and the dynamic cache's.",
        "| prompt | static, [B, H, Q, max_cache_len] mask (before), s | static now, s | dynamic cache, s "
        "| now ÷ before speed | now ÷ dynamic | peak MiB before | now | dynamic | same tokens |",
        rows,
    )


if __name__ == "__main__":
    main()
