"""FSDP2 on CPU ranks (gloo), with torch's `fully_shard`: what Accelerate does on GPUs, shown where it cannot.

Accelerate 1.16 runs CPU processes as plain data parallel even under an FSDP config (its `AcceleratorState` makes
`DistributedType.FSDP` only for GPU-like devices), so `alibi-lm train` refuses FSDP on CPU ranks. This script runs
the same sharding Accelerate applies on GPUs (`fsdp2_prepare_model`: one `fully_shard` unit per `AlibiDecoderLayer`,
then the root, the tied embedding in the root) on this project's model and data, and checks what a sharded run has to
get right:

  torchrun --nproc-per-node 2 recipes/scaling/fsdp_cpu.py OUT                  # sharded training
  python recipes/scaling/fsdp_cpu.py OUT                                        # the single-process reference
  torchrun --nproc-per-node 2 recipes/scaling/fsdp_cpu.py OUT --kill-after 6   # SIGKILL after step 6's checkpoint
  torchrun --nproc-per-node 2 recipes/scaling/fsdp_cpu.py OUT --resume          # go on from the last checkpoint
  torchrun --nproc-per-node 2 recipes/scaling/fsdp_cpu.py OUT --init-from DIR   # fine-tune DIR, rank 0 reading it

Every run trains on the same global batch (`--batch` rows of `--block-size` tokens, split across the ranks) from the
offline Wikipedia text, and writes into OUT:
  - `shards-rank{r}.json`: each parameter's DTensor placements and this rank's bytes, next to the full model's;
  - `losses.json`: the loss of every step (the mean over the global batch, as the single process computes it);
  - `step-{k}/`: sharded model and AdamW state through torch.distributed.checkpoint (each rank writes its shards);
  - `final/`: the full weights gathered on rank 0, saved as a Hub-format folder (safetensors, config with auto_map,
    the modeling files, the tokenizer, SHA256SUMS) that `from_pretrained` loads with transformers alone.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from datasets import Dataset
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import fully_shard
from transformers import AutoTokenizer

from alibi_lm import AlibiConfig, AlibiForCausalLM
from alibi_lm.blocks import group_texts, train_bpe_tokenizer
from alibi_lm.data import wikipedia_texts
from alibi_lm.integrity import write_checksums
from alibi_lm.model_files import prepare_for_hub
from alibi_lm.modeling.alibi_masks import get_alibi_slopes
from alibi_lm.modeling.modeling_alibi import AlibiDecoderLayer

MODEL = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder for the reports, checkpoints and the final model")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=8, help="global batch: rows per step over all ranks")
    parser.add_argument("--block-size", type=int, default=32)
    parser.add_argument("--vocab-size", type=int, default=512)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--save-every", type=int, default=3, help="sharded checkpoint every this many steps")
    parser.add_argument("--kill-after", type=int, help="SIGKILL every rank once this step's checkpoint is written")
    parser.add_argument("--resume", action="store_true", help="go on from the last sharded checkpoint in OUT")
    parser.add_argument("--init-from", type=Path, help="fine-tune this Hub-format folder (only rank 0 reads it)")
    args = parser.parse_args(argv)
    if args.batch <= 0 or args.steps <= 0 or args.save_every <= 0:
        parser.error("--batch, --steps and --save-every must be positive")
    return args


def learning_rate(step: int, args: argparse.Namespace) -> float:
    """Linear warmup over the first 2 steps, then cosine to zero: a schedule that a resume has to get right."""
    if step < 2:
        return args.lr * (step + 1) / 2
    return args.lr * 0.5 * (1 + math.cos(math.pi * (step - 2) / max(1, args.steps - 2)))


def tokenizer_for(args: argparse.Namespace, rank: int):
    """The init folder's tokenizer, or a byte-level BPE trained on the training text by rank 0 and read by the rest."""
    if args.init_from is not None:
        return AutoTokenizer.from_pretrained(args.init_from)
    folder = args.out / "tokenizer"
    if rank == 0 and not (folder / "tokenizer.json").exists():
        texts = Dataset.from_dict({"text": wikipedia_texts("train")[:400]})
        train_bpe_tokenizer(texts, args.vocab_size).save_pretrained(folder)
    barrier()
    return AutoTokenizer.from_pretrained(folder)


def global_batches(tokenizer, args: argparse.Namespace) -> torch.Tensor:
    """`[steps, batch, block_size]` token ids: the same rows in the same order on every rank and world size."""
    ids = tokenizer(wikipedia_texts("train")[:400])["input_ids"]
    rows = torch.tensor(group_texts({"input_ids": ids}, args.block_size)["input_ids"])
    needed = args.steps * args.batch
    if len(rows) < needed:
        raise ValueError(f"{args.steps} steps x {args.batch} rows need {needed} blocks; the text gives {len(rows)}.")
    return rows[:needed].view(args.steps, args.batch, args.block_size)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def restore_buffers(model: AlibiForCausalLM) -> None:
    """`to_empty` leaves buffers uninitialized; the ALiBi slopes are not in the state dict, so they are made again."""
    encoding = model.model.position_encoding
    if hasattr(encoding, "alibi_slopes"):
        encoding.alibi_slopes = get_alibi_slopes(encoding.num_heads, encoding.max_bias)


def build_model(args: argparse.Namespace, tokenizer, rank: int, sharded: bool) -> AlibiForCausalLM:
    """The model on every rank, sharded when `sharded`; from `--init-from` through rank 0 alone
    (Accelerate's `fsdp_cpu_ram_efficient_loading`: the others build it on the meta device and get the weights by
    broadcast, so only one process ever holds a full copy)."""
    torch.manual_seed(0)
    if args.init_from is None:
        config = AlibiConfig(vocab_size=len(tokenizer), train_length=args.block_size, **MODEL)
        model = AlibiForCausalLM(config)
        if sharded:
            shard(model)
        return model
    if not sharded:
        return AlibiForCausalLM.from_pretrained(args.init_from)
    config = AlibiConfig.from_pretrained(args.init_from)
    full = AlibiForCausalLM.from_pretrained(args.init_from).state_dict() if rank == 0 else {}
    with torch.device("meta"):
        model = AlibiForCausalLM(config)
    shard(model)
    model.to_empty(device="cpu")
    restore_buffers(model)
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(model, full, options=options)
    return model


def shard(model: AlibiForCausalLM) -> None:
    """Accelerate's FSDP2 wrapping with the shipped config (`fsdp2_prepare_model`): TRANSFORMER_BASED_WRAP units on
    AlibiDecoderLayer with reshard_after_forward=True, then the root with torch's default (it holds the tied embedding
    and lm_head, so the tie survives)."""
    for module in model.modules():
        if isinstance(module, AlibiDecoderLayer):
            fully_shard(module, reshard_after_forward=True)
    fully_shard(model)


def shard_report(model: torch.nn.Module, rank: int, world: int) -> dict:
    """Every parameter's placements and this rank's share of its bytes."""
    parameters, local_bytes, full_bytes = {}, 0, 0
    for name, parameter in model.named_parameters():
        local = parameter.to_local() if hasattr(parameter, "to_local") else parameter
        placements = [str(p) for p in getattr(parameter, "placements", ())]
        parameters[name] = {"placements": placements, "shape": list(parameter.shape), "local_shape": list(local.shape)}
        local_bytes += local.numel() * local.element_size()
        full_bytes += parameter.numel() * parameter.element_size()
    tied = model.lm_head.weight is model.model.embed_tokens.weight
    return {
        "rank": rank,
        "world_size": world,
        "parameters": parameters,
        "local_bytes": local_bytes,
        "full_bytes": full_bytes,
        "tied_embeddings": tied,
    }


def last_checkpoint(out: Path) -> tuple[int, Path] | None:
    steps = [(int(p.name.split("-")[1]), p) for p in out.glob("step-*") if (p / "done").exists()]
    return max(steps) if steps else None


def save_checkpoint(model, optimizer, step: int, losses: list[float], out: Path, rank: int) -> None:
    """Sharded model and optimizer state (each rank writes its own shards), then a `done` marker once all have."""
    folder = out / f"step-{step}"
    state = {"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer)}
    dcp.save(state, checkpoint_id=str(folder))
    barrier()
    if rank == 0:
        (folder / "losses.json").write_text(json.dumps(losses))
        (folder / "done").write_text(str(step))
    barrier()


def load_checkpoint(model, optimizer, folder: Path) -> list[float]:
    state = {"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer)}
    dcp.load(state, checkpoint_id=str(folder))
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, optimizer, state["optimizer"])
    return json.loads((folder / "losses.json").read_text())


def save_final(model, tokenizer, out: Path, rank: int) -> None:
    """The full weights gathered to rank 0 (every rank takes part), saved there as a Hub-format folder."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    full = get_model_state_dict(model, options=options)
    if rank == 0:
        plain = AlibiForCausalLM(model.config)
        plain.load_state_dict(full, strict=False)  # lm_head.weight is the tied embedding
        plain.tie_weights()
        prepare_for_hub(plain, tokenizer)
        plain.save_pretrained(out / "final")
        tokenizer.save_pretrained(out / "final")
        write_checksums(out / "final")
    barrier()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sharded = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if sharded:
        dist.init_process_group("gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if sharded else (0, 1)
    if args.batch % world:
        raise ValueError(f"--batch {args.batch} does not split over {world} ranks.")
    if rank == 0:
        args.out.mkdir(parents=True, exist_ok=True)
    barrier()

    tokenizer = tokenizer_for(args, rank)
    batches = global_batches(tokenizer, args)
    model = build_model(args, tokenizer, rank, sharded)
    (args.out / f"shards-rank{rank}.json").write_text(json.dumps(shard_report(model, rank, world), indent=1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1)

    losses: list[float] = []
    start = 0
    if args.resume:
        found = last_checkpoint(args.out)
        if found is None:
            raise FileNotFoundError(f"--resume: no finished step-* checkpoint in {args.out}")
        start, folder = found
        losses = load_checkpoint(model, optimizer, folder)[:start]
        print(f"rank {rank}: resumed from {folder} at step {start}", flush=True)

    rows = args.batch // world
    model.train()
    began = time.perf_counter()
    for step in range(start, args.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, args)
        ids = batches[step, rank * rows : (rank + 1) * rows]
        loss = model(input_ids=ids, labels=ids).loss  # FSDP averages the ranks' gradients: the global mean's gradient
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        mean = loss.detach().clone()
        if sharded:
            dist.all_reduce(mean)
            mean /= world
        losses.append(mean.item())
        if rank == 0:
            print(f"step {step + 1}/{args.steps} loss {losses[-1]:.6f}", flush=True)
        if (step + 1) % args.save_every == 0 or step + 1 == args.steps:
            if sharded:
                save_checkpoint(model, optimizer, step + 1, losses, args.out, rank)
            if args.kill_after == step + 1:
                os.kill(os.getpid(), signal.SIGKILL)  # as a preempted job dies: no cleanup, no final save
    if rank == 0:
        report = {"world_size": world, "losses": losses, "seconds": time.perf_counter() - began, "start": start}
        (args.out / "losses.json").write_text(json.dumps(report, indent=1))
    if sharded:
        save_final(model, tokenizer, args.out, rank)
        dist.destroy_process_group()
    else:
        prepare_for_hub(model, tokenizer)
        model.save_pretrained(args.out / "final")
        tokenizer.save_pretrained(args.out / "final")
        write_checksums(args.out / "final")
    return 0


if __name__ == "__main__":
    sys.exit(main())
