"""How many graphs torch.compile builds for flex_attention generation, with and without length buckets.

    python recipes/experiments/flex_recompiles.py [--no-buckets]

Greedy cached generation (8 new tokens) from 12 prompt lengths (10 ... 21 tokens) and then 64 new tokens from one
prompt, on the test suite's tiny model with attn_implementation="flex_attention", fp32 CPU. `--no-buckets` runs
each prompt at its own length, as the model did before `flex_bucket` (one compile per length). Prints the graphs
dynamo compiled, how often it hit its recompile limit (after which it silently runs the unfused path), and the time.
Part of recipes/results/flex-recompiles.md.
"""

from __future__ import annotations

import argparse
import time

import torch
import transformers
from torch._dynamo.utils import counters

import alibi_lm.modeling.alibi_masks as masks
from alibi_lm import AlibiConfig, AlibiForCausalLM


def limit_hits() -> int:
    return sum(n for reason, n in counters["unimplemented"].items() if "recompile limit" in reason.lower())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-buckets", action="store_true", help="compile each prompt length (the old behaviour)")
    args = parser.parse_args()
    if args.no_buckets:
        masks.flex_bucket = lambda length: length
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    config = AlibiConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=64, train_length=16)  # fmt: skip
    model = AlibiForCausalLM._from_config(config, attn_implementation="flex_attention").eval()
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for length in range(10, 22):
        prompt = torch.randint(1, 99, (1, length), generator=generator)  # no 0: generate reads it as padding
        model.generate(prompt, max_new_tokens=8, do_sample=False, pad_token_id=0)
    varied = (counters["stats"]["unique_graphs"], limit_hits(), time.perf_counter() - start)
    prompt = torch.randint(1, 99, (1, 20), generator=generator)
    model.generate(prompt, max_new_tokens=64, min_new_tokens=64, do_sample=False, pad_token_id=0)
    print(f"buckets: {'off' if args.no_buckets else 'on'}")
    print(f"12 prompt lengths x 8 new tokens: {varied[0]} graphs, {varied[1]} recompile-limit hits, {varied[2]:.1f} s")
    print(f"then 64 new tokens from a 20-token prompt: {counters['stats']['unique_graphs'] - varied[0]} more graphs")


if __name__ == "__main__":
    main()
