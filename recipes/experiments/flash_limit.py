"""Dense ALiBi against the flash limit: the Triton kernel (`alibi_triton`), flex (the default) and no bias on sdpa.

    python recipes/experiments/flash_limit.py --out recipes/results/flash-limit            # a CUDA machine
    TRITON_INTERPRET=1 python recipes/experiments/flash_limit.py --device cpu --small --out /tmp/fl  # the same code

1. Exactness in fp32 on the device: `alibi_triton` logits and gradients against eager with left padding, packed
   documents and windows; greedy tokens against eager; the model under `torch.compile`, forward and backward; a
   windowed model's continuous batching on a paged cache smaller than its requests (the ring of kept keys) against
   `generate`; a windowed model's compiled `generate(cache_implementation="static")` (`StaticWindowLayer`) against a
   whole `StaticCache`.
2. The issue's two tables side by side (gpu-350m: hidden 1024, 24 layers, 16 heads, bf16): training tokens/s at
   8 x 2,048 and 1 x 8,192, prefill seconds at 16k and 64k; every row over the limit (no bias on sdpa's flash
   kernel). Interleaved repeats (`alibi_lm.measure.run_interleaved`), medians. One more route to the limit: dense
   ALiBi with each head's keys past e^-40 of bias skipped (windows at T = 40, what the CPU default does; exactness
   checks its logits against eager), which a GPU default could take if it is the fastest.
3. Attention alone (forward + backward) on the routes the issue names: the limit, alibi_triton, flex with its
   default kernel, with `kernel_options`, and with max-autotune.
4. Many lengths in one process: prefill at 12 lengths on `alibi_triton`, the peak memory of each (never L x L) and
   the seconds the first call at each length bucket spends autotuning.
The fastest exact kernel per column is printed as the recommendation for `alibi_fused` on this device.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch
from transformers import ContinuousBatchingConfig, GenerationConfig

from alibi_lm import AlibiConfig, AlibiForCausalLM
from alibi_lm.bench import build_model, environment
from alibi_lm.bench_presets import PRESETS, Preset
from alibi_lm.measure import peak_memory, prefill, release, run_interleaved, train_step
from alibi_lm.modeling import alibi_triton
from alibi_lm.modeling.alibi_masks import ALIBI_FUSED, ALIBI_TRITON

# (row name, model family, attn_implementation): the kernels compared, the limit and Falcon's L x L mask.
ROWS = (
    ("alibi-lm default (flex)", "alibi", ALIBI_FUSED),
    ("alibi-lm, alibi_triton", "alibi", ALIBI_TRITON),
    ("no bias, sdpa (flash): the limit", "none", "sdpa"),
    ("Falcon-alibi, sdpa with an L x L mask", "falcon", "sdpa"),
    ("windowed T = 20, default", "windowed", ALIBI_FUSED),
    ("windowed T = 20, alibi_triton", "windowed", ALIBI_TRITON),
    (SILENCED := "dense, keys past e^-40 skipped (windows at T = 40), default", "windowed", ALIBI_FUSED),
)
# A row's own alibi_window_cutoff. At T = 40 each head skips the keys whose bias is below -40, as the CPU default does
# for dense ALiBi: their weight is at most e^-40 of the query's own key's (for equal scores), below fp32's precision.
CUTOFFS = {SILENCED: 40.0}
LIMIT = "no bias, sdpa (flash): the limit"
# the dense exact kernels the default chooses from (exact to e^-40 for the last)
EXACT = ("alibi-lm default (flex)", "alibi-lm, alibi_triton", SILENCED)


def small_model(device: torch.device, **overrides) -> AlibiForCausalLM:
    """A seeded fp32 model small enough to compare against eager: 2 layers, 4 heads sharing 2 KV heads."""
    torch.manual_seed(0)
    config = AlibiConfig(
        vocab_size=256, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=128, train_length=64, **overrides,
    )  # fmt: skip
    return AlibiForCausalLM._from_config(config, attn_implementation="eager").to(device).eval()


def exactness(device: torch.device) -> dict:
    """fp32: alibi_triton against eager on the device (padding, packed documents, windows, compile and its graph breaks, generation)."""
    out = {}
    ids = torch.randint(1, 256, (2, 300), generator=torch.Generator().manual_seed(0)).to(device)
    mask = torch.ones_like(ids)
    mask[0, :37] = 0
    positions = torch.cat([torch.arange(100), torch.arange(120), torch.arange(80)])[None].to(device)
    for name, overrides in {"dense": {}, "windowed T=3": {"alibi_window_cutoff": 3.0}}.items():
        model = small_model(device, **overrides)
        eager = model(ids, attention_mask=mask).logits
        packed = model(ids[:1], position_ids=positions).logits
        model.train()
        model(ids, attention_mask=mask, labels=ids).loss.backward()
        grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        model.set_attn_implementation(ALIBI_TRITON)
        model(ids, attention_mask=mask, labels=ids).loss.backward()
        grad_error = max((p.grad - g).abs().max().item() for p, g in zip(model.parameters(), grads))
        model.zero_grad()
        model.eval()
        with torch.no_grad():
            logits = model(ids, attention_mask=mask).logits
            packed_triton = model(ids[:1], position_ids=positions).logits
        model.train()
        torch._dynamo.reset()
        graph_breaks = torch._dynamo.explain(model)(ids, attention_mask=mask, labels=ids).graph_break_count
        model.zero_grad()
        compiled = torch.compile(model)
        compiled(ids, attention_mask=mask, labels=ids).loss.backward()
        compiled_grad_error = max((p.grad - g).abs().max().item() for p, g in zip(model.parameters(), grads))
        model.zero_grad()
        model.eval()
        tokens = model.generate(ids[:, -40:], max_new_tokens=24, do_sample=False, pad_token_id=0)
        model.set_attn_implementation("eager")
        eager_tokens = model.generate(ids[:, -40:], max_new_tokens=24, do_sample=False, pad_token_id=0)
        if (
            not overrides
        ):  # dense ALiBi with each head's keys past e^-40 skipped (windows at T = 40), the default kernel
            silenced = small_model(device, alibi_window_cutoff=40.0)
            silenced.set_attn_implementation(ALIBI_FUSED)
            with torch.no_grad():
                silenced_error = (silenced(ids, attention_mask=mask).logits - eager)[mask.bool()].abs().max().item()
        out[name] = {
            "logits_max_abs_diff_padded": (logits - eager)[mask.bool()].abs().max().item(),
            "logits_max_abs_diff_packed": (packed_triton - packed).abs().max().item(),
            "grad_max_abs_diff": grad_error,
            "compiled_grad_max_abs_diff": compiled_grad_error,
            "compiled_graph_breaks": graph_breaks,  # 0: the kernels are custom ops in the graph
            "greedy_tokens_equal": bool(torch.equal(tokens, eager_tokens)),
        }
        if not overrides:
            out[name]["windows_at_e^-40_logits_max_abs_diff"] = silenced_error
        print(name, out[name], flush=True)
    return out


def continuous_batching(device: torch.device) -> dict:
    """A windowed model's `generate_batch` on a 64-token paged cache, two requests of 70 and 75 tokens (only a ring
    of the keys some head reads holds them): greedy tokens against `generate` on each prompt alone."""
    model = small_model(device, alibi_window_cutoff=4.0, alibi_max_bias=2.0)  # windows of 5 to 16 tokens
    model.set_attn_implementation(ALIBI_FUSED)
    generator = torch.Generator().manual_seed(1)
    prompts = [torch.randint(1, 256, (n,), generator=generator).tolist() for n in (40, 45)]
    config = GenerationConfig(max_new_tokens=30, do_sample=False, eos_token_id=-1, pad_token_id=0)
    paged = ContinuousBatchingConfig(num_blocks=4, page_size=16, max_batch_tokens=64)
    outputs = model.generate_batch(inputs=prompts, generation_config=config, continuous_batching_config=paged)
    equal = []
    for output in outputs.values():
        ids = torch.tensor([output.prompt_ids], device=device)
        alone = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config)
        equal.append(output.error is None and output.generated_tokens == alone[0, ids.shape[1] :].tolist())
    out = {"windowed_generate_batch_tokens_equal": all(equal), "requests": len(equal)}
    print("continuous batching", out, flush=True)
    return out


def static_window(device: torch.device, new_tokens: int = 400) -> dict:
    """A windowed model's `generate(cache_implementation="static")`, which generate compiles on an accelerator (CUDA
    graphs, `mode="reduce-overhead"`): the cache it builds (`StaticWindowLayer`, 17 slots) against a whole
    `StaticCache` passed in, greedy tokens against the dynamic cache, decoding tokens/s of each (a CUDA graph recorded
    per step would show here), the graphs dynamo built and the cache's MiB."""
    from torch._dynamo.utils import counters
    from transformers import CompileConfig, StaticCache

    model = small_model(device, alibi_window_cutoff=4.0, alibi_max_bias=2.0)  # windows of 5 to 16 tokens
    model.set_attn_implementation(ALIBI_FUSED)
    ids = torch.randint(1, 256, (2, 40), generator=torch.Generator().manual_seed(2)).to(device)
    options = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    compile_config = CompileConfig() if device.type == "cuda" else CompileConfig(backend="eager")
    compile_config._compile_all_devices = device.type != "cuda"
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    whole = ids.shape[1] + new_tokens
    caches = {
        "built by generate": lambda: {"cache_implementation": "static"},
        "whole StaticCache": lambda: {"cache": StaticCache(config=model.config, max_cache_len=whole)},
    }
    out = {}
    with torch.no_grad():
        dynamic = model.generate(ids, **options)
        for name, cache_kwargs in caches.items():
            torch._dynamo.reset()
            counters.clear()
            warm_up = {**options, "max_new_tokens": 8, "min_new_tokens": 8}  # compiles the decoding step
            model.generate(ids, compile_config=compile_config, **warm_up, **cache_kwargs())
            sync()
            start = time.perf_counter()
            result = model.generate(
                ids, compile_config=compile_config, return_dict_in_generate=True, **options, **cache_kwargs()
            )
            sync()
            seconds = time.perf_counter() - start
            layers = result.past_key_values.layers
            out[name] = {
                "layer": type(layers[0]).__name__,
                "tokens_per_s": new_tokens / seconds,
                "greedy_tokens_equal": bool(torch.equal(result.sequences, dynamic)),
                "graphs": counters["stats"]["unique_graphs"],
                "cache_mib": sum(t.numel() * t.element_size() for la in layers for t in (la.keys, la.values)) / 2**20,
            }
    print("static window", out, flush=True)
    return out


def tables(preset: Preset, device: torch.device, prefill_lengths: tuple[int, ...]) -> dict:
    """Training tokens/s and prefill seconds, every row interleaved per shape."""
    vocab = preset.vocab_size
    models = {
        row: build_model(family, attn, replace(preset, window_cutoff=CUTOFFS.get(row, preset.window_cutoff)), device)
        for row, family, attn in ROWS
    }
    train, prefills = {}, {}
    for batch, length in preset.train_shapes:
        inputs = torch.randint(1, vocab, (batch, length), device=device)
        calls = {row: (lambda m=model, x=inputs: train_step(m, x)) for row, model in models.items()}
        measured = run_interleaved(calls, device, repeats=preset.repeats, measure_memory=False)
        train[f"{batch} x {length}"] = {
            row: (batch * length / statistics.median(m.times) if m.times else m.error) for row, m in measured.items()
        }
        print("train", batch, length, train[f"{batch} x {length}"], flush=True)
        release(device)
    for length in prefill_lengths:
        inputs = torch.randint(1, vocab, (1, length), device=device)
        calls = {row: (lambda m=model, x=inputs: prefill(m, x)) for row, model in models.items()}
        measured = run_interleaved(calls, device, repeats=preset.repeats, measure_memory=False)
        prefills[str(length)] = {
            row: (statistics.median(m.times) if m.times else m.error) for row, m in measured.items()
        }
        print("prefill", length, prefills[str(length)], flush=True)
        release(device)
    return {"train_tokens_per_s": train, "prefill_seconds": prefills}


def attention_alone(device: torch.device, shape: tuple[int, int, int, int], dtype: torch.dtype) -> dict:
    """Forward + backward of attention alone `[B, H, L, D]`, ms: the routes the issue names, side by side.

    sdpa causal without bias (the limit), alibi_triton, and flex_attention with an ALiBi `score_mod` three ways:
    default kernel, `kernel_options` BLOCK_M=128 / BLOCK_N=64, and `mode="max-autotune-no-cudagraphs"`.
    """
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    from torch.nn.functional import scaled_dot_product_attention

    from alibi_lm.modeling.alibi_layout import AttentionLayout
    from alibi_lm.modeling.alibi_masks import get_alibi_slopes, triton_alibi_mask
    from alibi_lm.modeling.alibi_triton import alibi_flash_attention

    batch, heads, length, dim = shape
    slopes = get_alibi_slopes(heads).to(device)
    leaves = [torch.randn(shape, device=device, dtype=dtype, requires_grad=True) for _ in "qkv"]
    grad = torch.randn(shape, device=device, dtype=dtype)
    mask = triton_alibi_mask(AttentionLayout(batch, length, length, 0, device), slopes, None, heads)
    block_mask = create_block_mask(lambda b, h, q, k: k <= q, None, None, length, length, device=device)

    def score_mod(score, b, h, q_idx, kv_idx):
        return score - slopes[h] * (q_idx - kv_idx)

    default_flex = torch.compile(flex_attention)
    tuned_flex = torch.compile(flex_attention, mode="max-autotune-no-cudagraphs")
    blocks = {"BLOCK_M": 128, "BLOCK_N": 64}
    kernels = {
        "no bias, sdpa (flash)": lambda q, k, v: scaled_dot_product_attention(q, k, v, is_causal=True),
        "alibi_triton": lambda q, k, v: alibi_flash_attention(q, k, v, mask, dim**-0.5),
        "flex, default": lambda q, k, v: default_flex(q, k, v, score_mod=score_mod, block_mask=block_mask),
        "flex, BLOCK_M=128 BLOCK_N=64": lambda q, k, v: default_flex(
            q, k, v, score_mod=score_mod, block_mask=block_mask, kernel_options=blocks
        ),
        "flex, max-autotune": lambda q, k, v: tuned_flex(q, k, v, score_mod=score_mod, block_mask=block_mask),
    }

    def step(kernel):
        kernel(*leaves).backward(grad)
        for leaf in leaves:
            leaf.grad = None

    calls = {name: (lambda kernel=kernel: step(kernel)) for name, kernel in kernels.items()}
    measured = run_interleaved(calls, device, repeats=5, measure_memory=False)
    out = {name: (statistics.median(m.times) * 1e3 if m.times else m.error) for name, m in measured.items()}
    print("attention alone, ms", shape, out, flush=True)
    release(device)
    return out


def many_lengths(preset: Preset, device: torch.device, lengths: list[int]) -> list[dict]:
    """Prefill at many lengths in one process on alibi_triton: time of the first call (autotuning) and peak memory."""
    model = build_model("alibi", ALIBI_TRITON, preset, device)
    rows = []
    for length in lengths:
        inputs = torch.randint(1, preset.vocab_size, (1, length), device=device)
        start = time.perf_counter()
        prefill(model, inputs)
        if device.type == "cuda":
            torch.cuda.synchronize()
        first = time.perf_counter() - start
        rows.append(
            {
                "length": length,
                "first_call_s": first,
                "peak_bytes": peak_memory(lambda x=inputs: prefill(model, x), device),
            }
        )
        print(rows[-1], flush=True)
    return rows


def ratios(result: dict) -> dict:
    """Each row over the limit (tokens/s: row / limit; seconds: limit / row), and the fastest exact kernel."""
    out = {}
    for table, higher_is_better in (("train_tokens_per_s", True), ("prefill_seconds", False)):
        for column, rows in result.get(table, {}).items():
            limit = rows.get(LIMIT)
            if not isinstance(limit, float):
                continue
            speed = {
                row: (value / limit if higher_is_better else limit / value)
                for row, value in rows.items()
                if isinstance(value, float)
            }
            exact = {row: speed[row] for row in EXACT if row in speed}
            out[f"{table} {column}"] = {"over_limit": speed, "fastest_exact": max(exact, key=exact.get, default=None)}
    return out


def markdown(result: dict) -> str:
    lines = [f"# Dense ALiBi against the flash limit ({result['environment'].get('device_name', '')})", ""]
    lines += ["Made by `python recipes/experiments/flash_limit.py --out recipes/results/flash-limit`.", ""]
    for table, unit in (("train_tokens_per_s", "training step, tokens/s"), ("prefill_seconds", "prefill, seconds")):
        if table not in result:
            continue
        columns = list(result[table])
        lines += [f"| {unit} | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
        for row, *_ in ROWS:
            cells = []
            for column in columns:
                value = result[table][column].get(row)
                cells.append(f"{value:,.3f}" if isinstance(value, float) and value < 100 else
                             f"{value:,.0f}" if isinstance(value, float) else str(value))  # fmt: skip
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["| column | default / limit | alibi_triton / limit | e^-40 windows / limit | fastest exact |"]
    lines += ["|---|---|---|---|---|"]
    for column, entry in result["ratios"].items():
        over = entry["over_limit"]
        cells = " | ".join(f"{over.get(row, float('nan')):.2f}x" for row in EXACT)
        lines.append(f"| {column} | {cells} | {entry['fastest_exact']} |")
    lines += ["", "Attention alone, forward + backward, ms (medians of 5):", ""]
    for shape, rows in result.get("attention_alone_ms", {}).items():
        lines += [f"| {shape} | ms | over the limit |", "|---|---|---|"]
        limit = rows.get("no bias, sdpa (flash)")
        for name, value in rows.items():
            ratio = f"{value / limit:.2f}x" if isinstance(value, float) and isinstance(limit, float) else ""
            lines.append(
                f"| {name} | {value:.3f} | {ratio} |" if isinstance(value, float) else f"| {name} | {value} | |"
            )
        lines.append("")
    lines += ["", "Exactness (fp32, on the device):", "", "```", json.dumps(result.get("exactness"), indent=1), "```"]
    lines += ["", "Many lengths in one process (alibi_triton prefill):", "", "| length | first call s | peak MiB |"]
    lines += ["|---|---|---|"] + [
        f"| {r['length']} | {r['first_call_s']:.2f} | {r['peak_bytes'] / 2**20:.0f} |"
        for r in result.get("many_lengths", [])
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="tiny sizes, to check the script on a CPU")
    parser.add_argument("--out", type=Path, required=True, help="folder for flash-limit.json and flash-limit.md")
    parser.add_argument(
        "--sections", nargs="+", default=["exactness", "alone", "tables", "lengths"],
        choices=["exactness", "alone", "tables", "lengths"], help="what to run (default: all, in this order)",
    )  # fmt: skip
    args = parser.parse_args()
    device = torch.device(args.device)
    alibi_triton.check_device(device)
    if args.small:
        base = PRESETS["cpu-small"]
        preset = Preset(
            hidden_size=64, num_layers=2, num_heads=4, vocab_size=256, dtype="float32",
            train_shapes=((2, 64), (1, 128)), prefill_lengths=(128,), decode_prompt=8, decode_new_tokens=4,
            backends=base.backends, repeats=1, targets=base.targets,
        )  # fmt: skip
        prefill_lengths, lengths = (128, 256), [40, 100, 130]
        alone_shapes = ((1, 4, 128, 16),)
    else:
        preset, prefill_lengths = PRESETS["gpu-350m"], (16384, 65536)
        lengths = [300, 700, 1500, 2047, 2049, 3000, 5000, 8191, 9000, 12000, 16384, 20000]
        alone_shapes = ((8, 16, 2048, 64), (1, 16, 8192, 64))  # the 350M model's attention (DESIGN.md's table)
    args.out.mkdir(parents=True, exist_ok=True)
    dtype = torch.float32 if args.small else torch.bfloat16
    sections = {
        "exactness": lambda: {
            "exactness": {
                **exactness(device),
                "continuous batching": continuous_batching(device),
                "compiled static window cache": static_window(device),
            }
        },
        "alone": lambda: {
            "attention_alone_ms": {" x ".join(map(str, s)): attention_alone(device, s, dtype) for s in alone_shapes}
        },
        "tables": lambda: tables(preset, device, prefill_lengths),
        "lengths": lambda: {"many_lengths": many_lengths(preset, device, lengths)},
    }
    result = {"environment": environment(device)}
    for name in args.sections:
        result.update(sections[name]())
        # Written after every section: a run cut off by a time limit still leaves what it measured.
        (args.out / "flash-limit.json").write_text(json.dumps(result, indent=1) + "\n")
    result["ratios"] = ratios(result)
    (args.out / "flash-limit.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "flash-limit.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
