"""A long generation, windowed and dense ALiBi: the cache that forgets what no head can see.

  python recipes/experiments/sliding_cache.py [--tokens 65536] [--cutoff 20] [--out recipes/results]

One random-weight model (hidden 128, 2 layers, 8 heads, fp32) generates greedily four ways, in one process, one
after the other, with the cache `generate` builds (the model gives an empty `DynamicCache` transformers' sliding
layers, which keep the last keys some head can read) to `--tokens`: windowed ALiBi (`alibi_window_cutoff`, T = 8:
the widest head sees 2,048 tokens back), and dense ALiBi, whose CPU default drops keys past e^-40 of bias (the
mildest slope, 1/256, reads 10,240 tokens back); then each with a full cache (a `DynamicCache` subclass, which the
model leaves alone: what it did before) to `--compare-tokens`. A full cache is copied whole at every step
(transformers' `DynamicLayer` concatenates), so those slow down as they grow: on a 2-core CPU they are run to a
shorter length. Every `--every` tokens it records the bytes the cache holds, the process's peak resident memory and
the clock. Each model's two runs must agree token for token over their common length. Writes `sliding-cache.json`,
`.md` and `.png` into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from transformers import DynamicCache, StoppingCriteria

from alibi_lm import AlibiConfig, AlibiForCausalLM
from alibi_lm.machine import describe


def resident_peak_mib() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    return float("nan")


class FullCache(DynamicCache):
    """A cache of another class, which the model leaves as it is: it keeps every key (what the model did before)."""


def cache_bytes(cache) -> int:
    return sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers if layer.is_initialized)


class Recorder(StoppingCriteria):
    """Records the cache's bytes, the resident peak and the clock every `every` generated tokens; never stops."""

    def __init__(self, every: int, prompt: int):
        self.every, self.prompt, self.cache, self.rows, self.start = every, prompt, None, [], time.perf_counter()

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        generated = input_ids.shape[1] - self.prompt
        if generated % self.every == 0 and self.cache is not None:
            self.rows.append(
                {
                    "tokens": generated,
                    "cache_mib": cache_bytes(self.cache) / 2**20,
                    "rss_peak_mib": resident_peak_mib(),
                    "seconds": time.perf_counter() - self.start,
                }
            )
        return torch.zeros(input_ids.shape[0], dtype=torch.bool)


def run(model, prompt, tokens: int, every: int, full_cache: bool) -> dict:
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # each run's own resident peak (VmHWM), not the process's so far
    recorder = Recorder(every, prompt.shape[1])
    cache = FullCache() if full_cache else DynamicCache(config=model.config)
    recorder.cache = cache
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(
            prompt, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, cache=cache,
            stopping_criteria=[recorder], pad_token_id=0,
        )  # fmt: skip
    seconds = time.perf_counter() - start
    kinds = sorted({type(layer).__name__ for layer in cache.layers})
    return {"tokens": tokens, "tokens_per_second": tokens / seconds, "seconds": seconds, "cache_layers": kinds,
            "curve": recorder.rows, "generated": out[0, prompt.shape[1]:].tolist()}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=65536, help="tokens the sliding-cache run generates")
    parser.add_argument("--compare-tokens", type=int, default=16384, help="tokens the full-cache runs generate")
    parser.add_argument("--cutoff", type=float, default=8.0)
    parser.add_argument("--every", type=int, default=1024)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "results")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    config = AlibiConfig(vocab_size=512, hidden_size=128, num_hidden_layers=2, num_attention_heads=8, train_length=512)
    model = AlibiForCausalLM(config).eval()
    prompt = torch.randint(1, 512, (1, 64), generator=torch.Generator().manual_seed(0))
    results = {"machine": f"{describe('cpu')}", "torch": torch.__version__, "tokens": args.tokens,
               "cutoff": args.cutoff, "threads": torch.get_num_threads(), "runs": {}}  # fmt: skip
    results["kept"] = {}
    for model_name, cutoff in (("windowed", args.cutoff), ("dense", None)):
        model.config.alibi_window_cutoff = cutoff
        results["kept"][model_name] = model.model.keys_to_keep()
    results["compare_tokens"] = args.compare_tokens
    runs = (
        ("windowed, sliding cache", args.cutoff, False, args.tokens),
        ("windowed, full cache", args.cutoff, True, args.compare_tokens),
        ("dense, sliding cache", None, False, args.tokens),
        ("dense, full cache", None, True, args.compare_tokens),
    )
    for name, cutoff, full, tokens in runs:  # fmt: skip
        model.config.alibi_window_cutoff = cutoff
        print(f"{name}: generating {tokens} tokens", flush=True)
        results["runs"][name] = run(model, prompt, tokens, args.every, full)
        print(f"  {results['runs'][name]['tokens_per_second']:.1f} tokens/s", flush=True)
    results["tokens_identical"] = {}
    for model_name in ("windowed", "dense"):
        sliding, full = (results["runs"][f"{model_name}, {kind} cache"]["generated"] for kind in ("sliding", "full"))
        common = min(len(sliding), len(full))
        results["tokens_identical"][model_name] = sliding[:common] == full[:common]
    for run_ in results["runs"].values():
        run_.pop("generated")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sliding-cache.json").write_text(json.dumps(results, indent=1))
    (args.out / "sliding-cache.md").write_text(markdown(results, argv if argv is not None else sys.argv[1:]))
    plot(results, args.out / "sliding-cache.png")
    print((args.out / "sliding-cache.md").read_text())
    return 0 if all(results["tokens_identical"].values()) else 1


def markdown(results: dict, argv: list[str]) -> str:
    lines = [
        "# A long generation: the sliding cache against a full one, windowed and dense ALiBi",
        "",
        f"Made by `{' '.join(['python recipes/experiments/sliding_cache.py', *argv])}`" + f" on {results['machine']}, "
        f"torch {results['torch']}: a random-weight model (hidden 128, 2 layers, 8 heads, fp32), greedy, after a "
        f"64-token prompt. Windowed, cutoff T = {results['cutoff']:g}: the widest head sees "
        f"{results['kept']['windowed']:,} tokens back; dense, the CPU default drops keys past e^-40 of bias, so the "
        f"mildest head reads {results['kept']['dense']:,} back. The sliding cache keeps that many keys per layer.",
        "",
        "| run | cache layers | tokens generated | tokens/s | cache at the end (MiB) | resident peak of the run (MiB) |",
        "|---|---|---|---|---|---|",
    ]
    for name, run_ in results["runs"].items():
        end = run_["curve"][-1] if run_["curve"] else {"cache_mib": float("nan"), "rss_peak_mib": float("nan")}
        lines.append(
            f"| {name} | {', '.join(run_['cache_layers'])} | {run_['tokens']:,} | {run_['tokens_per_second']:.1f} | "
            f"{end['cache_mib']:.1f} | "
            f"{end['rss_peak_mib']:.0f} |"
        )
    lines.append("")
    for model_name, identical in results["tokens_identical"].items():
        lines.append(
            f"{model_name.capitalize()} greedy tokens, sliding against full cache, over the first "
            f"{results['compare_tokens']:,}: {'identical' if identical else 'DIFFER'}."
        )
    for model_name, kept in results["kept"].items():
        sliding = results["runs"][f"{model_name}, sliding cache"]["curve"]
        past = [row["cache_mib"] for row in sliding if row["tokens"] > kept]
        if past:
            lines.append(
                f"{model_name.capitalize()} sliding cache once past {kept:,} tokens: {min(past):.2f} to "
                f"{max(past):.2f} MiB."
            )
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, (memory, speed) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, run_ in results["runs"].items():
        tokens = [row["tokens"] for row in run_["curve"]]
        memory.plot(tokens, [row["cache_mib"] for row in run_["curve"]], label=name)
        rates = [row["tokens"] / row["seconds"] for row in run_["curve"]]
        speed.plot(tokens, rates, label=name)
    for (model_name, kept), style in zip(results["kept"].items(), (":", "--")):
        memory.axvline(kept, color="grey", linestyle=style, label=f"keys kept, {model_name}")
    memory.set(xlabel="generated tokens", ylabel="KV cache (MiB)", title="Cache memory during generation")
    speed.set(xlabel="generated tokens", ylabel="tokens/s so far", title="Decoding speed")
    memory.legend()
    speed.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
