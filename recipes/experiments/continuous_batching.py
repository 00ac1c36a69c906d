"""transformers' continuous batching (`generate_batch`) on an alibi-lm model, against `generate` on a padded batch.

    python recipes/experiments/continuous_batching.py --out recipes/results/continuous-batching.md [--rounds 3]
        [--prompts 16 --lengths 64 1024] [--shared-prefix 0]

Sixteen prompts of 64 to 1,024 tokens by default (lengths spread evenly, shuffled), 32 greedy tokens each, on the bench's
cpu-small model (hidden 512, 4 layers, 8 heads, vocabulary 8,192; fp32, no gradients). Seven ways, interleaved round
by round in one process (medians): continuous batching as it runs on the CPU (each request's queries on its own
keys, with the mask generate builds for it; full pages, since no request outgrows the 10,241 keys some head reads);
the same on a ring of those keys per request (what a longer request gets); as it runs elsewhere
(one `[1, H, Q, K]` mask for the step's flattened row); the first and third again with no bias (the model with
`position_encoding="none"`; the second of them is transformers' own sdpa path, one `[1, 1, Q, K]` mask); `generate` on
one left-padded batch of all sixteen; and `generate` on each prompt alone. Checked: continuous batching gives every
prompt the greedy tokens `generate` gives it alone.
"""

from __future__ import annotations

import argparse
import statistics
from functools import partial
from pathlib import Path
from unittest import mock

import torch
import transformers
from tqdm.auto import tqdm
from transformers import ContinuousBatchingConfig, GenerationConfig

from alibi_lm import AlibiConfig, AlibiForCausalLM
from alibi_lm.measure import run_interleaved, write_results
from alibi_lm.modeling import alibi_paged

BLOCKED_BY_DEFAULT = alibi_paged.blocked_by_default

NEW_TOKENS = 32
GREEDY = GenerationConfig(max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=-1, pad_token_id=0)


def model(position_encoding: str) -> AlibiForCausalLM:
    torch.manual_seed(0)
    config = AlibiConfig(vocab_size=8192, hidden_size=512, num_hidden_layers=4, num_attention_heads=8,
                         intermediate_size=2048, train_length=512, position_encoding=position_encoding)  # fmt: skip
    return AlibiForCausalLM._from_config(config).eval()  # the default attention (ALIBI_FUSED)


def prompts(count: int, shortest: int, longest: int, shared: int = 0) -> list[list[int]]:
    """`count` random prompts of `shortest` to `longest` tokens, each after the same `shared` tokens."""
    generator = torch.Generator().manual_seed(0)
    lengths = torch.linspace(shortest, longest, count).long()[torch.randperm(count, generator=generator)]
    prefix = torch.randint(1, 8192, (shared,), generator=generator).tolist()
    return [prefix + torch.randint(1, 8192, (int(n),), generator=generator).tolist() for n in lengths]


def continuous(lm: AlibiForCausalLM, inputs: list[list[int]]) -> list[list[int]]:
    # A paged cache that holds every request at once (the default takes most of the free memory), 512 tokens a step.
    pages = sum(-(-(len(prompt) + NEW_TOKENS) // 64) for prompt in inputs)
    config = ContinuousBatchingConfig(num_blocks=pages, page_size=64, max_batch_tokens=512)
    outputs = lm.generate_batch(inputs, GREEDY, continuous_batching_config=config, warmup=False)
    by_prompt = {tuple(output.prompt_ids): output.generated_tokens for output in outputs.values()}
    return [by_prompt[tuple(prompt)] for prompt in inputs]


def ring(lm: AlibiForCausalLM, inputs: list[list[int]]) -> list[list[int]]:
    """The paged cache as a ring of the 10,241 keys some head reads per request, which the manager takes only where a
    request may outgrow them (`alibi_paged.ring_pays`): forced here, to weigh what it costs."""
    with mock.patch.object(alibi_paged, "ring_pays", lambda *args: True):
        return continuous(lm, inputs)


def one_mask(lm: AlibiForCausalLM, inputs: list[list[int]]) -> list[list[int]]:
    """What other devices run: one mask for the step's flattened row, every query against every key read."""
    alibi_paged.blocked_by_default = lambda device, dtype: False
    try:
        return continuous(lm, inputs)
    finally:
        alibi_paged.blocked_by_default = BLOCKED_BY_DEFAULT


def padded(lm: AlibiForCausalLM, inputs: list[list[int]]) -> list[list[int]]:
    width = max(map(len, inputs))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in inputs])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in inputs])
    with torch.no_grad():
        return lm.generate(ids, attention_mask=mask, generation_config=GREEDY)[:, width:].tolist()


def one_by_one(lm: AlibiForCausalLM, inputs: list[list[int]]) -> list[list[int]]:
    with torch.no_grad():
        return [lm.generate(torch.tensor([p]), generation_config=GREEDY)[0, len(p) :].tolist() for p in inputs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="markdown table to write")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=16, help="how many prompts")
    parser.add_argument("--lengths", type=int, nargs=2, default=(64, 1024), help="the shortest and longest prompt")
    parser.add_argument("--shared-prefix", type=int, default=0, help="tokens every prompt begins with (default 0)")
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    alibi, none = model("alibi"), model("none")
    inputs = prompts(args.prompts, *args.lengths, args.shared_prefix)
    calls = {
        "continuous batching, request by request (CPU default)": partial(continuous, alibi, inputs),
        "continuous batching, request by request, the ring of kept keys": partial(ring, alibi, inputs),
        "continuous batching, one [1, H, Q, K] mask": partial(one_mask, alibi, inputs),
        "continuous batching, no bias, request by request": partial(continuous, none, inputs),
        "continuous batching, no bias, one [1, 1, Q, K] mask (transformers' sdpa path)": partial(
            one_mask, none, inputs
        ),
        "generate, one padded batch": partial(padded, alibi, inputs),
        "generate, each prompt alone": partial(one_by_one, alibi, inputs),
    }
    with tqdm(total=len(calls), desc="warm-up") as bar:
        measured = run_interleaved(calls, torch.device("cpu"), repeats=args.rounds, measure_memory=False, progress=bar)
    alone = measured["generate, each prompt alone"].output
    tokens = len(inputs) * NEW_TOKENS
    rows = []
    for way, result in measured.items():
        seconds = statistics.median(result.times)
        same = "–" if "no bias" in way else "yes" if result.output == alone else "no"  # another model's tokens
        rows.append(f"| {way} | {seconds:.2f} | {tokens / seconds:.0f} | {same} |")
    prompt_tokens = sum(map(len, inputs))
    write_results(
        args.out,
        "Continuous batching (generate_batch) on an alibi-lm model, CPU",
        f"python recipes/experiments/continuous_batching.py --out {args.out} --rounds {args.rounds} "
        f"--prompts {args.prompts} --lengths {args.lengths[0]} {args.lengths[1]}"
        + (f" --shared-prefix {args.shared_prefix}" if args.shared_prefix else ""),
        f"{len(inputs)} prompts, {prompt_tokens:,} prompt tokens in all, {NEW_TOKENS} greedy tokens each; seconds for "
        f"all of them, medians of {args.rounds} interleaved rounds; 'same tokens': each prompt's tokens equal "
        "generate's on that prompt alone.",
        "| way | seconds | new tokens/s | same tokens |",
        rows,
    )


if __name__ == "__main__":
    main()
