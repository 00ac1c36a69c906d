"""The extrapolation sweep of issue 21 in one process, on the default path: peak memory per length, recompiles.

    python recipes/experiments/gpu_sweep.py --out results/gpu_sweep.json            # on a CUDA machine
    python recipes/experiments/gpu_sweep.py --device cpu --small --out /tmp/s.json  # the same code on a CPU

1. Sweep: one process, a 4-layer model loaded with no attn_implementation (flex on a GPU; `--device cpu` forces it
   there too), forwards at 64, 128, ... 131,072 tokens in fp32 and then in bf16, dense and then windowed (cutoff
   20). Prints each forward's peak memory (CUDA) and time, and dynamo's recompile-limit hits. Before issue 21 the
   9th graph ran torch's unfused flex: 26 GiB at 16k, 104 GiB at 32k, out of memory at 64k on an H200.
2. Rows: the bench model (hidden 1024, 24 layers, 16 heads, vocab 50,304, bf16): training tokens/s at 8 x 2,048
   and 1 x 8,192 and prefill seconds at 16k and 64k, default path against the no-bias model on sdpa (flash) and
   windowed ALiBi (cutoff 20); medians of 3 after a warm-up. `--small` shrinks everything to CPU size.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
from pathlib import Path

import torch
import transformers
from gpu_check import build, sync  # the sibling script's model builder and CUDA sync
from torch._dynamo.utils import counters

from alibi_lm import AlibiForCausalLM, machine
from alibi_lm.modeling.modeling_alibi import AlibiModel


def limit_hits() -> int:
    return sum(n for reason, n in counters["unimplemented"].items() if "recompile limit" in reason.lower())


def measure(fn, device: torch.device) -> tuple[float, float | None]:
    """Seconds and peak GiB above what was live (CUDA only) of one call."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start_bytes = torch.cuda.memory_allocated()
    start = time.perf_counter()
    fn()
    sync(device)
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated() - start_bytes) / 2**30 if device.type == "cuda" else None
    return seconds, peak


def tokens(batch: int, length: int, vocab: int, device: torch.device) -> torch.Tensor:
    return torch.randint(1, vocab, (batch, length), generator=torch.Generator().manual_seed(length)).to(device)


def sweep(device: torch.device, small: bool) -> list[dict]:
    size = dict(vocab_size=1024, hidden_size=256, num_hidden_layers=4, num_attention_heads=8, intermediate_size=1024)
    longest = 2048 if small else 131072
    lengths = [64 * 2**i for i in range(20) if 64 * 2**i <= longest]
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        for cutoff in (None, 20.0):
            model = build(size, device, dtype, None, alibi_window_cutoff=cutoff)
            for length in lengths:
                ids = tokens(1, length, size["vocab_size"], device)
                try:
                    with torch.no_grad():
                        seconds, peak = measure(functools.partial(model, ids, logits_to_keep=1), device)
                    error = None
                except torch.OutOfMemoryError as exc:
                    seconds, peak, error = None, None, f"out of memory: {exc}"[:200]
                row = dict(dtype=str(dtype), cutoff=cutoff, tokens=length, seconds=seconds, peak_gib=peak,
                           limit_hits=limit_hits(), error=error)  # fmt: skip
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def train_step(model: AlibiForCausalLM, optimizer: torch.optim.Optimizer, ids: torch.Tensor) -> None:
    model.train()
    model(ids, labels=ids).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def speed_rows(device: torch.device, small: bool) -> dict:
    size = dict(
        vocab_size=50304, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096
    )
    shapes, prefills, dtype = [(8, 2048), (1, 8192)], [16384, 65536], torch.bfloat16
    if small:
        size = dict(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
        shapes, prefills, dtype = [(2, 256), (1, 512)], [1024, 2048], torch.float32
    models = {
        "default": dict(attn=None),
        "no bias, sdpa": dict(attn="sdpa", position_encoding="none"),
        "windowed T=20": dict(attn=None, alibi_window_cutoff=20.0),
    }
    result = {}
    for name, options in models.items():
        attn = options.pop("attn")
        model = build(size, device, dtype, attn, **options)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
        for batch, length in shapes:
            ids = tokens(batch, length, size["vocab_size"], device)
            step = functools.partial(train_step, model, optimizer, ids)
            if device.type == "cpu" and attn is None:
                continue  # flex has no backward on the CPU
            step()
            times = [measure(step, device)[0] for _ in range(3)]
            result[f"{name}: train {batch}x{length} tokens/s"] = batch * length / statistics.median(times)
        model.eval()
        for length in prefills:
            ids = tokens(1, length, size["vocab_size"], device)
            with torch.no_grad():
                model(ids, logits_to_keep=1)
                runs = [measure(functools.partial(model, ids, logits_to_keep=1), device) for _ in range(3)]
            result[f"{name}: prefill {length} s"] = statistics.median(r[0] for r in runs)
            result[f"{name}: prefill {length} peak GiB"] = runs[-1][1]
        print(json.dumps({k: v for k, v in result.items() if k.startswith(name)}), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="CPU sizes, to check the script")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        AlibiModel.fused_default_devices = ("cuda", "cpu")  # the GPU default path, flex, on the CPU
    transformers.logging.set_verbosity_error()
    report = {
        "machine": machine.describe(device),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "sweep": sweep(device, args.small),
        "rows": speed_rows(device, args.small),
        "limit_hits": limit_hits(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"recompile-limit hits: {report['limit_hits']}; wrote {args.out}")


if __name__ == "__main__":
    main()
