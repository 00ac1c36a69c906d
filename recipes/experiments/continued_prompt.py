"""The CPU default on a prompt continued after cached tokens: the [B, H, Q, K] mask it took until 2026-12-06 (for a
left-padded batch until 2026-12-07, with gradients until later that day; compiled after a static cache's tokens until
later still) against the blocked plan for the last queries.

    python recipes/experiments/continued_prompt.py --out recipes/results/continued-prompt.md [--rounds 5]

A chat's next turn, or a long prompt prefilled in chunks (of one prompt, or of a left-padded batch, as generate's
`prefill_chunk_size` runs), runs several queries after a cache. The bench's cpu-small
model (hidden 512, 4 layers, 8 heads, vocabulary 8,192; fp32, sdpa, the CPU default), without gradients, and with
them for a training step on a continuation (forward and backward; a cached prefix, a prompt tuned after it), and
compiled (`torch.compile(model.forward, fullgraph=True)`, transformers' recipe) after a static cache's tokens. Each
row times the continuation three ways, interleaved round by round in one process (medians; each call copies the cached prefix
first, the same work in every column): with the old mask (`alibi_masks.continued`, compiled
`alibi_masks.compiled_continuation`, switched off), with the plan (now), and the same model without a bias (the no-bias
limit, its own cache).
"""

from __future__ import annotations

import argparse
import copy
import statistics
from functools import partial
from pathlib import Path

import torch
import transformers
from tqdm.auto import tqdm
from transformers import DynamicCache, StaticCache

from alibi_lm import AlibiConfig, AlibiForCausalLM
from alibi_lm.measure import run_interleaved, write_results
from alibi_lm.modeling import alibi_masks

CONTINUED = alibi_masks.continued
COMPILED_CONTINUATION = alibi_masks.compiled_continuation


def never(layout) -> int:
    return 0


def not_compiled(layout) -> bool:
    return False


def model(position_encoding: str) -> AlibiForCausalLM:
    torch.manual_seed(0)
    config = AlibiConfig(vocab_size=8192, hidden_size=512, num_hidden_layers=4, num_attention_heads=8,
                         intermediate_size=2048, train_length=2048, position_encoding=position_encoding)  # fmt: skip
    return AlibiForCausalLM._from_config(config, attn_implementation="sdpa").eval()


def prefix(lm: AlibiForCausalLM, ids: torch.Tensor, mask: torch.Tensor | None, past: int, kind: str):
    cache = (
        DynamicCache(config=lm.config)
        if kind == "dynamic"
        else StaticCache(config=lm.config, max_cache_len=ids.shape[1])
    )
    with torch.no_grad():
        lm(ids[:, :past], attention_mask=None if mask is None else mask[:, :past], cache=cache, use_cache=True)
    return cache


def continue_(
    lm: AlibiForCausalLM,
    ids: torch.Tensor,
    mask: torch.Tensor | None,
    past: int,
    cache,
    plan,
    train: bool,
    forward=None,
) -> torch.Tensor:
    """The continuation's last logits, or with `train` its loss after a backward through it; through `forward` (the
    compiled one) where given, the plan then switched by `compiled_continuation`."""
    if forward is None:
        alibi_masks.continued = plan
    else:
        alibi_masks.compiled_continuation = COMPILED_CONTINUATION if plan is CONTINUED else not_compiled
    cache = copy.deepcopy(cache)
    if train:
        lm.zero_grad(set_to_none=True)
        loss = lm(ids[:, past:], attention_mask=mask, cache=cache, use_cache=True, labels=ids[:, past:]).loss
        loss.backward()
        return loss.detach()
    with torch.no_grad():
        return (forward or lm)(
            ids[:, past:], attention_mask=mask, cache=cache, use_cache=True, logits_to_keep=1
        ).logits


def left_padding(rows: list[int], length: int) -> torch.Tensor:
    """An attention_mask `[len(rows), length]` with each row's padding on the left."""
    return torch.stack([(torch.arange(length) >= padding).long() for padding in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="markdown table to write")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    alibi, none = model("alibi"), model("none")
    ids = torch.randint(0, 8192, (2, 4608), generator=torch.Generator().manual_seed(0))
    workloads = [("512 tokens after 4,096, dynamic cache", 4096, "dynamic", [0], False),
                 ("2,048 tokens after 2,048, dynamic cache", 2048, "dynamic", [0], False),
                 ("512 tokens after 4,096, static cache", 4096, "static", [0], False),
                 ("2 x 512 tokens after 4,096, left-padded by 0 and 1,000, dynamic cache", 4096, "dynamic", [0, 1000], False),
                 ("2 x 512 tokens after 4,096, left-padded by 0 and 1,000, static cache", 4096, "static", [0, 1000], False),
                 ("training step: 512 tokens after 4,096, dynamic cache", 4096, "dynamic", [0], True),
                 ("training step: 2 x 512 tokens after 4,096, left-padded by 0 and 1,000", 4096, "dynamic", [0, 1000], True),
                 ("compiled: 512 tokens after 4,096, static cache", 4096, "compiled", [0], False),
                 ("compiled: 2 x 512 tokens after 4,096, left-padded by 0 and 1,000, static cache", 4096, "compiled", [0, 1000], False)]  # fmt: skip
    compiled = {lm: torch.compile(lm.forward, fullgraph=True) for lm in (alibi, none)}
    rows = []
    for name, past, kind, padding, train in tqdm(workloads, desc="workloads"):
        text = ids[: len(padding), : past + (512 if past == 4096 else 2048)]
        mask = left_padding(padding, text.shape[1]) if any(padding) else None
        caches = {lm: prefix(lm, text, mask, past, "static" if kind == "compiled" else kind) for lm in (alibi, none)}
        ways = {"before": (alibi, never), "now": (alibi, CONTINUED), "no bias": (none, CONTINUED)}
        calls = {
            way: partial(
                continue_, lm, text, mask, past, caches[lm], plan, train, compiled[lm] if kind == "compiled" else None
            )
            for way, (lm, plan) in ways.items()
        }
        measured = run_interleaved(calls, torch.device("cpu"), repeats=args.rounds, measure_memory=False)
        before, now, limit = (statistics.median(measured[way].times) for way in ways)
        same = torch.allclose(measured["before"].output, measured["now"].output, atol=1e-5, rtol=0)
        rows.append(
            f"| {name} | {before:.3f} | {now:.3f} | {limit:.3f} | {before / now:.2f}x | {limit / before:.2f}x "
            f"| {limit / now:.2f}x | {'yes' if same else 'no'} |"
        )
    alibi_masks.continued, alibi_masks.compiled_continuation = CONTINUED, COMPILED_CONTINUATION
    write_results(
        args.out,
        "A prompt continued after cached tokens, CPU default: [B, H, Q, K] mask (before) against the plan (now)",
        f"python recipes/experiments/continued_prompt.py --out {args.out} --rounds {args.rounds}",
        f"Seconds, medians of {args.rounds} interleaved rounds; 'same logits': before and now within 1e-5 (the last "
        "logits; the loss of a training step).",
        "| continuation | mask (before), s | plan (now), s | no bias, s | now ÷ before speed | before ÷ no bias "
        "| now ÷ no bias | same logits |",
        rows,
    )


if __name__ == "__main__":
    main()
