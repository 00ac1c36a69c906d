"""The GPU checks of the speed issue in one run: fused default, recompiles, static-cache tokens, windowed speed.

    python recipes/experiments/gpu_check.py --out results/gpu_check.json            # on a CUDA machine
    python recipes/experiments/gpu_check.py --device cpu --small --out /tmp/g.json  # the same code, tiny, on a CPU

1. Fused default: a model loaded with no attn_implementation prefills with flex (no [B, H, L, L] mask); its peak
   memory against the same model with attn_implementation="sdpa".
2. Recompiles: graphs dynamo compiles for flex generation from 12 prompt lengths, then 64 cached greedy steps.
3. Static cache + compile against the dynamic cache, fp32 and bf16: greedy tokens, the largest logit difference,
   and, where the tokens differ, the margin between the top two logits at the first differing step (a bf16 near-tie
   shows a margin at bf16 resolution).
4. Windowed ALiBi (cutoff 20) against dense ALiBi and the no-bias model on flex: prefill at 16k and 64k, a
   training step at 8k (median of 3, after a warm-up).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import transformers
from torch._dynamo.utils import counters

from alibi_lm import AlibiConfig, AlibiForCausalLM
from alibi_lm.modeling import modeling_alibi


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak(fn, device: torch.device) -> float | None:
    """GiB that `fn` allocates above what is live (CUDA only)."""
    if device.type != "cuda":
        fn()
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - start) / 2**30


def timed(fn, device: torch.device, repeats: int = 3) -> float:
    fn()  # warm-up (compiles)
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def build(size: dict, device: torch.device, dtype: torch.dtype, attn: str | None, **overrides) -> AlibiForCausalLM:
    torch.manual_seed(0)
    config = AlibiConfig(**size, **overrides)
    kwargs = {} if attn is None else {"attn_implementation": attn}
    with torch.device(device):
        model = AlibiForCausalLM._from_config(config, dtype=dtype, **kwargs) if attn else AlibiForCausalLM(config)
    return model.to(device=device, dtype=dtype).eval()


def ids(length: int, vocab: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, vocab, (1, length), generator=torch.Generator().manual_seed(seed)).to(device)


def greedy(model, prompt: torch.Tensor, new: int, **options):
    with torch.no_grad():
        return model.generate(
            prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new, min_new_tokens=new, do_sample=False,
            pad_token_id=0, output_logits=True, return_dict_in_generate=True, **options,
        )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="tiny sizes, to check the script on a CPU")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    device = torch.device(args.device)
    transformers.logging.set_verbosity_error()
    if args.small:
        size = dict(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=8)
        long, longer, train, bf16 = 1024, 2048, 1024, torch.bfloat16
    else:  # the bench's gpu-350m model
        size = dict(vocab_size=50304, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16)
        long, longer, train, bf16 = 16384, 65536, 8192, torch.bfloat16
    if device.type == "cpu":  # the fused default is a GPU rule; let the CPU stand in for one
        modeling_alibi.AlibiModel.fused_default_devices = ("cuda", "cpu")
    report: dict = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "small": args.small}

    # 1. The fused default.
    chosen = []
    original = modeling_alibi.AlibiModel.build_attention_mask

    def spy(self, layout, dtype):
        mask = original(self, layout, dtype)
        chosen.append(type(mask).__name__)
        return mask

    modeling_alibi.AlibiModel.build_attention_mask = spy
    prompt = ids(long, size["vocab_size"], device)
    fused = {}
    for name, attn in (("default", None), ("explicit sdpa", "sdpa")):
        model = build(size, device, bf16, attn)
        chosen.clear()
        try:
            with torch.no_grad():
                gib = peak(lambda m=model: m(prompt, logits_to_keep=1, use_cache=False), device)
            fused[name] = {"mask": chosen[0], "peak_gib": gib}
        except torch.OutOfMemoryError:
            fused[name] = {"mask": chosen[0] if chosen else None, "peak_gib": "out of memory"}
        del model
    modeling_alibi.AlibiModel.build_attention_mask = original
    report["fused_default"] = {"prefill_tokens": long, **fused}
    print("fused default:", report["fused_default"], flush=True)

    # 2. Recompiles of flex generation.
    torch._dynamo.reset()
    counters.clear()
    model = build(size, device, bf16, "flex_attention")
    for n in range(10, 22):
        greedy(model, ids(n, size["vocab_size"], device, seed=n), 8)
    varied = counters["stats"]["unique_graphs"]
    greedy(model, ids(20, size["vocab_size"], device), 64)
    hits = sum(v for k, v in counters["unimplemented"].items() if "recompile limit" in k.lower())
    report["recompiles"] = {
        "graphs_12_prompt_lengths": varied, "graphs_then_64_steps": counters["stats"]["unique_graphs"] - varied,
        "recompile_limit_hits": hits,
    }  # fmt: skip
    print("recompiles:", report["recompiles"], flush=True)
    del model

    # 3. Static cache + compile against the dynamic cache.
    static = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        model = build(size, device, dtype, "sdpa")
        prompt = ids(512 if not args.small else 64, size["vocab_size"], device)
        dynamic = greedy(model, prompt, 64)
        compiled = greedy(model, prompt, 64, cache_implementation="static")
        a, b = dynamic.sequences[0, prompt.shape[1] :], compiled.sequences[0, prompt.shape[1] :]
        differs = (a != b).nonzero()
        entry = {"same_tokens": differs.numel() == 0}
        steps = differs.numel() and int(differs[0]) + 1 or len(a)
        entry["max_logit_diff_before_divergence"] = max(
            float((x.float() - y.float()).abs().max()) for x, y in zip(dynamic.logits[:steps], compiled.logits[:steps])
        )
        if differs.numel():
            step = int(differs[0])
            top2 = dynamic.logits[step][0].float().topk(2).values
            entry.update(first_difference=step, dynamic_top2_margin=float(top2[0] - top2[1]))
        static[name] = entry
        del model
    report["static_vs_dynamic"] = static
    print("static vs dynamic:", static, flush=True)

    # 4. Windowed against dense ALiBi and no bias, on flex.
    speed = {}
    for name, overrides in (
        ("windowed", {"alibi_window_cutoff": 20.0}),
        ("dense", {}),
        ("no bias", {"position_encoding": "none"}),
    ):
        model = build(size, device, bf16, "flex_attention", **overrides)
        row = {}
        for n in (long, longer):
            prompt = ids(n, size["vocab_size"], device)
            with torch.no_grad():
                row[f"prefill {n} s"] = timed(
                    lambda m=model, p=prompt: m(p, logits_to_keep=1, use_cache=False), device
                )
        if device.type == "cuda":  # flex has no backward on the CPU
            batch = ids(train, size["vocab_size"], device)

            def step(m=model, x=batch):
                m.train()
                m(x, labels=x, use_cache=False).loss.backward()
                m.zero_grad(set_to_none=True)

            row[f"train {train} s"] = timed(step, device)
        speed[name] = row
        print(name, row, flush=True)
        del model
    for key in speed["no bias"]:
        speed["windowed"][key.replace(" s", " vs no bias")] = speed["no bias"][key] / speed["windowed"][key]
        speed["windowed"][key.replace(" s", " vs dense")] = speed["dense"][key] / speed["windowed"][key]
    report["windowed_speed"] = speed
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
