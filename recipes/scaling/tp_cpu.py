"""Tensor parallel inference on CPU ranks (gloo): transformers' `tp_plan="auto"` against the single-process model.

  torchrun --nproc-per-node 2 recipes/scaling/tp_cpu.py MODEL_DIR [--report tp.json]

Each rank loads MODEL_DIR twice: whole, and split by the model's plan (q/k/v and up colwise, o and down rowwise,
lm_head colwise with the logits gathered), so every rank computes its own heads. For each attention backend it
compares, on a left-padded batch three times the training length:
  - the fp32 logits of one forward (every non-padded position);
  - greedy generation with the cache, from a prompt of half the training length to twice it and more.
ALiBi's slopes belong to heads: a rank holding heads 2-3 of 4 must use slopes 3 and 4, not 1 and 2. Rank 0 writes
the report; the script exits 1 if any logit differs by more than --tolerance or any token differs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import AutoModelForCausalLM, DistributedConfig

import alibi_lm  # noqa: F401  registers the model with the Auto classes
from alibi_lm.scoring import training_length

BACKENDS = ("sdpa", "eager", "flex_attention")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="a Hub-format model folder")
    parser.add_argument("--report", type=Path, help="write the results here as JSON (rank 0)")
    parser.add_argument("--tolerance", type=float, default=1e-5, help="largest fp32 logit difference allowed")
    args = parser.parse_args(argv)

    rows = []
    for backend in BACKENDS:
        whole = AutoModelForCausalLM.from_pretrained(args.model, attn_implementation=backend).eval()
        split = AutoModelForCausalLM.from_pretrained(
            args.model, attn_implementation=backend, distributed_config=DistributedConfig(tp_plan="auto")
        ).eval()
        rank, world = dist.get_rank(), dist.get_world_size()
        length = training_length(whole.config)
        vocab = whole.config.vocab_size
        ids = torch.randint(3, vocab, (2, 3 * length), generator=torch.Generator().manual_seed(0))
        mask = torch.ones_like(ids)
        mask[1, : length // 2] = 0  # left padding on the second row
        prompt = length // 2
        with torch.no_grad():
            reference, logits = whole(ids, attention_mask=mask).logits, split(ids, attention_mask=mask).logits
            difference = (reference - logits)[mask.bool()].abs().max().item()
            settings = dict(max_new_tokens=2 * length, do_sample=False, min_new_tokens=2 * length)
            expected = whole.generate(ids[:, :prompt], attention_mask=mask[:, :prompt], **settings)
            generated = split.generate(ids[:, :prompt], attention_mask=mask[:, :prompt], **settings)
        weight = split.model.layers[0].self_attn.q_proj.weight
        local = weight.to_local() if hasattr(weight, "to_local") else weight
        heads = [None] * world
        dist.all_gather_object(heads, split.model.local_heads())
        rows.append(
            {
                "backend": backend,
                "world_size": world,
                "train_length": length,
                "logits_max_difference": difference,
                "generated_length": generated.shape[1],
                "same_tokens": bool(torch.equal(expected, generated)),
                "q_proj_local_shape": list(local.shape),
                "heads_per_rank": heads,
            }
        )
        if rank == 0:
            print(
                f"{backend:>15}: {world} ranks, heads {heads}, max |logit difference| {difference:.2e}, greedy "
                f"{generated.shape[1]} tokens (train_length {length}) {'identical' if rows[-1]['same_tokens'] else 'DIFFER'}",
                flush=True,
            )
    if dist.get_rank() == 0 and args.report:
        args.report.write_text(json.dumps(rows, indent=1))
    ok = all(r["logits_max_difference"] <= args.tolerance and r["same_tokens"] for r in rows)
    dist.destroy_process_group()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
