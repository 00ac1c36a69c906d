"""Train a language model that copies, so that the copy probe has something to measure.

    python recipes/experiments/train_copier.py runs/demo-compare/alibi runs/copiers/alibi --steps 2000

The demo's models do not copy (issue 13), and neither did models trained from scratch on text with repeated spans
mixed in (`recipes/results/copy-probe-attempt.md`): there the copies are a few tokens in a block of text, and their
gradient is lost among the text's. What makes a fresh 2-layer ALiBi model copy within a few hundred steps is a
separate loss on blocks dense with copies, so this trains a fresh model, with the configuration and tokenizer of
MODEL (its weights are not used), on two halves per step, each with its own mean loss, summed:

- 16 blocks of L tokens of the demo's training text (the test split, which the probe reads, is never seen), every
  token scored: the model stays a language model;
- 32 synthetic blocks of L random tokens (special tokens excluded) in which a span A of L/4 to L/2 tokens comes
  twice, 0 to L - 2|A| tokens apart, scored only on A[1:] the second time: the only way to lower that loss is to
  copy, from L/4 to 3L/4 tokens back, and the distance varies, so no encoding can copy by pointing a head at a
  fixed offset.

AdamW (lr 1e-3, weight decay 0.1, 50 warmup steps, cosine decay to a tenth), clipping 1.0, seed 0. Writes the
model and tokenizer to OUT (loadable by `alibi-lm eval`) and `copier.json` with the losses and the copy accuracy
every 100 steps.

Fine-tuning the trained demo ALiBi model instead did not work (2026-11-28): on these copy blocks alone, 500 steps
left its copy loss at 7.55 (ln 2,048 = 7.62), and 1,000 steps of this mix at 7.54 (800 steps with sparser blocks,
spans of L/16 to L/4 and 16 blocks a step: 7.61), where a fresh model given the copy blocks alone copied 83% of the
tokens after 300 steps, and given this mix, more than half from step 400 (`recipes/results/copy-probe.md`).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

from alibi_lm import AlibiConfig, AlibiForCausalLM
from alibi_lm.blocks import build_lm_datasets
from alibi_lm.data import OFFLINE_WIKIPEDIA, DataArguments


def copy_blocks(
    n: int, length: int, pool: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` blocks of random tokens from `pool`, each with a span written twice; labels only on the second copy's
    tokens after its first (the first copy and the token that starts the second cannot be predicted)."""
    ids = pool[torch.randint(len(pool), (n, length), generator=generator)]
    labels = torch.full_like(ids, -100)
    for row in range(n):
        span = int(torch.randint(max(2, length // 4), max(2, length // 2) + 1, (), generator=generator))
        gap = int(torch.randint(0, length - 2 * span + 1, (), generator=generator))
        start = int(torch.randint(0, length - 2 * span - gap + 1, (), generator=generator))
        second = start + span + gap
        ids[row, second : second + span] = ids[row, start : start + span]
        labels[row, second + 1 : second + span] = ids[row, second + 1 : second + span]
    return ids, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a model folder whose config and tokenizer to use, e.g. runs/demo-compare/alibi")
    parser.add_argument("out", help="where the fine-tuned model goes")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=16, help="text blocks per step")
    parser.add_argument("--copy-batch-size", type=int, default=32, help="synthetic copy blocks per step")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if min(args.steps, args.batch_size, args.copy_batch_size) < 1:
        parser.error("--steps, --batch-size and --copy-batch-size must be at least 1")
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        parser.error(f"{out} is not empty; remove it or choose another folder")

    torch.manual_seed(args.seed)
    model = AlibiForCausalLM(AlibiConfig.from_pretrained(args.model))
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    length = model.config.train_length  # the training length L the demo stored
    text = build_lm_datasets(DataArguments(dataset_name=OFFLINE_WIKIPEDIA, block_size=length), tokenizer, length)
    text_ids = torch.tensor(text["train"]["input_ids"])  # [blocks, L]
    pool = torch.tensor(sorted(set(range(model.config.vocab_size)) - set(tokenizer.all_special_ids)))
    generator = torch.Generator().manual_seed(args.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1)
    model.train()
    log, start = [], time.perf_counter()
    for step in range(1, args.steps + 1):
        for group in optimizer.param_groups:
            cosine = 0.1 + 0.45 * (1 + math.cos(math.pi * step / args.steps))
            group["lr"] = args.lr * min(step / 50, cosine)
        chosen = torch.randint(len(text_ids), (args.batch_size,), generator=generator)
        text_loss = model(input_ids=text_ids[chosen], labels=text_ids[chosen]).loss
        ids, labels = copy_blocks(args.copy_batch_size, length, pool, generator)
        copy_out = model(input_ids=ids, labels=labels)
        (text_loss + copy_out.loss).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        if step % 100 == 0 or step == args.steps:
            scored = labels[:, 1:] != -100
            hits = (copy_out.logits[:, :-1].argmax(-1) == labels[:, 1:]) & scored
            accuracy = hits.sum().item() / scored.sum().item()
            log.append({"step": step, "text_loss": round(text_loss.item(), 4),
                        "copy_loss": round(copy_out.loss.item(), 4), "copy_accuracy": round(accuracy, 4)})  # fmt: skip
            print(f"{args.model}: step {step} text loss {text_loss.item():.3f} copy loss {copy_out.loss.item():.3f} "
                  f"copy top-1 {accuracy:.0%} ({time.perf_counter() - start:.0f} s)", flush=True)  # fmt: skip
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "copier.json").write_text(json.dumps({"settings": vars(args), "log": log}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
