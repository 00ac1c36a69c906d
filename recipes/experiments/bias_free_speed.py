"""Training-step time of recipes/tiny-cpu.yaml's model with and without biases, interleaved in one process.

    python recipes/experiments/bias_free_speed.py [--threads 1] [--rounds 7] [--steps 20]

Alternates the two models round by round (A B A B ...) so that machine noise hits both alike, and reports the median
per-step time of each and their ratio. Part of recipes/results/bias-free.md.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from alibi_lm import AlibiConfig, AlibiForCausalLM

TINY_CPU = dict(vocab_size=4096, hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512)
NO_BIAS = dict(attention_bias=False, mlp_bias=False, layer_norm_bias=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = {}
    for name, extra in (("biases", {}), ("no-bias", NO_BIAS)):
        torch.manual_seed(0)
        model = AlibiForCausalLM(AlibiConfig(train_length=128, **TINY_CPU, **extra)).train()
        models[name] = (model, torch.optim.AdamW(model.parameters(), lr=1e-4))
    batch = torch.randint(0, TINY_CPU["vocab_size"], (8, 128), generator=torch.Generator().manual_seed(0))

    def step(model, optimizer) -> None:
        model(input_ids=batch, labels=batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for model, optimizer in models.values():  # warm-up
        for _ in range(3):
            step(model, optimizer)
    times = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, (model, optimizer) in models.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                step(model, optimizer)
            times[name].append((time.perf_counter() - start) / args.steps)
    median = {name: statistics.median(values) for name, values in times.items()}
    params = {name: sum(p.numel() for p in model.parameters()) for name, (model, _) in models.items()}
    for name in models:
        print(f"{name:8s} {params[name]:>9,} parameters  {median[name] * 1e3:7.2f} ms/step (median of {args.rounds})")
    print(f"no-bias / biases step time: {median['no-bias'] / median['biases']:.3f}")


if __name__ == "__main__":
    main()
