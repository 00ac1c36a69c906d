"""A long generation with a `torch.compile`d forward: the cache forgets what no head can see, compiled too.

    python recipes/experiments/compiled_sliding_cache.py --out recipes/results/compiled-sliding-cache.md
        [--tokens 8192]

The model of `sliding_cache.py` (random weights, hidden 128, 2 layers, 8 heads, fp32), windowed at T = 8 (the widest
head sees 2,048 tokens back), its forward compiled (`torch.compile`, default options), generates `--tokens` greedy
tokens after a 64-token prompt twice, one after the other: with the cache `generate` builds, whose layers turn
sliding in `generate`'s step preparation, outside the compiled forward (`AlibiForCausalLM.prepare_inputs_for_generation`);
and with a full cache (a `DynamicCache` subclass, which the model leaves alone: what a compiled forward kept before).
Recorded: tokens/s (the compilation included, and over the last 1,024 tokens), the cache's bytes at the end and the
graphs dynamo compiled. The two runs must give the same tokens (exit 1 otherwise).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch._dynamo.utils import counters

sys.path.insert(0, str(Path(__file__).parent))
import sliding_cache  # noqa: E402

from alibi_lm import AlibiConfig, AlibiForCausalLM  # noqa: E402
from alibi_lm.measure import write_results  # noqa: E402


def run(model, prompt: torch.Tensor, tokens: int, full: bool) -> dict:
    """`sliding_cache.run` (a cache's bytes and the clock every 1,024 tokens), from a fresh compilation."""
    torch.compiler.reset()
    counters.clear()
    result = sliding_cache.run(model, prompt, tokens, 1024, full)
    curve = result["curve"]
    return {
        "tokens_per_second": result["tokens_per_second"],
        "last_1024_per_second": 1024 / (curve[-1]["seconds"] - curve[-2]["seconds"]),
        "cache_mib": curve[-1]["cache_mib"],  # at the last token: what the cache holds when generate ends
        "graphs": counters["stats"]["unique_graphs"],
        "layers": result["cache_layers"],
        "generated": result["generated"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--out", type=Path, required=True, help="markdown table to write")
    args = parser.parse_args()
    torch.manual_seed(0)
    config = AlibiConfig(
        vocab_size=512, hidden_size=128, num_hidden_layers=2, num_attention_heads=8, train_length=512,
        alibi_window_cutoff=8.0,
    )  # fmt: skip
    model = AlibiForCausalLM(config).eval()
    model.forward = torch.compile(model.forward)
    prompt = torch.randint(1, 512, (1, 64), generator=torch.Generator().manual_seed(0))
    runs = {}
    for name, full in (
        ("the cache generate builds (forgets)", False),
        ("a full cache (what compiled kept before)", True),
    ):
        print(f"{name}: generating {args.tokens} tokens", flush=True)
        runs[name] = run(model, prompt, args.tokens, full)
    same = len({tuple(r.pop("generated")) for r in runs.values()}) == 1
    rows = [
        f"| {name} | {r['tokens_per_second']:.0f} | {r['last_1024_per_second']:.0f} | {r['cache_mib']:.1f} | "
        f"{r['graphs']} | {', '.join(r['layers'])} |"
        for name, r in runs.items()
    ]
    write_results(
        args.out,
        "A compiled forward's long generation, windowed ALiBi: the cache that forgets",
        f"python recipes/experiments/compiled_sliding_cache.py --out {args.out} --tokens {args.tokens}",
        f"{args.tokens:,} greedy tokens after 64, windowed T = 8 (widest head: {model.model.keys_to_keep():,} keys), "
        f"forward under torch.compile; tokens identical between the two: {'yes' if same else 'NO'}.",
        "| cache | tokens/s, whole run | tokens/s, last 1,024 | KV cache at the end, MiB | graphs | layers |",
        rows,
    )
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
