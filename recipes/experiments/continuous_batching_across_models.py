"""Do transformers' ALiBi models run its continuous batching (`generate_batch`), as our model does?

    python recipes/experiments/continuous_batching_across_models.py --out recipes/results/continuous-batching-across-models.md

The models of `packing_across_models.py` (random weights, perturbed so that greedy tokens vary; hidden 32, 2 layers, 4
heads), each on sdpa: four prompts of 5 to 40 tokens, 8 greedy tokens each through `generate_batch` on a small paged
cache, against `generate` on each prompt alone. transformers' manager reports a request that failed inside it in that
request's output (`GenerationOutput.error`), not as an exception: both are counted.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import transformers
from packing_across_models import VOCAB, models  # the sibling script: the same four models
from transformers import ContinuousBatchingConfig, GenerationConfig

from alibi_lm.measure import write_results

GREEDY = GenerationConfig(max_new_tokens=8, do_sample=False, eos_token_id=-1, pad_token_id=0)
PAGED = dict(num_blocks=16, page_size=16, max_batch_tokens=64)


def check(model: torch.nn.Module, prompts: list[list[int]]) -> tuple[int, int, str]:
    """(requests that gave generate's tokens, requests that failed, the first error)."""
    outputs = model.generate_batch(prompts, GREEDY, continuous_batching_config=ContinuousBatchingConfig(**PAGED))
    same, failed, first_error = 0, 0, ""
    for output in outputs.values():
        if output.error is not None:
            failed += 1
            first_error = first_error or output.error.splitlines()[0][:90]
            continue
        ids = torch.tensor([output.prompt_ids])
        with torch.no_grad():
            alone = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=GREEDY)
        same += output.generated_tokens == alone[0, ids.shape[1] :].tolist()
    return same, failed, first_error


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="markdown table to write")
    args = parser.parse_args()
    transformers.logging.set_verbosity_error()
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(1, VOCAB, (n,), generator=generator).tolist() for n in (5, 23, 40, 9)]
    rows = []
    for name, model in models().items():
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)
        model.eval().set_attn_implementation("sdpa")
        same, failed, error = check(model, prompts)
        rows.append(f"| {name} | {same} of {len(prompts)} | {failed} | {error or '–'} |")
    write_results(
        args.out,
        "Continuous batching (generate_batch) on transformers' ALiBi models and ours",
        f"python recipes/experiments/continuous_batching_across_models.py --out {args.out}",
        "Four prompts, 8 greedy tokens each; 'as generate': the request's tokens equal generate's on its prompt alone.",
        "| model | as generate | failed inside the manager | first error |",
        rows,
    )


if __name__ == "__main__":
    main()
