"""Is training short worth it? ALiBi trained at L against sinusoidal trained at 2L (`alibi-lm demo --efficiency`).

The paper's second claim (Press, Smith & Lewis, ICLR 2022, abstract): a 1.3B-parameter ALiBi model trained at
L = 1024 reaches the perplexity, at 2048 tokens, of a sinusoidal model trained at 2048, while training 11% faster and
using 11% less memory. The demo's version, on the demo's data and model size:

- both models see the same tokens: the same steps, each of the same number of tokens (ALiBi B blocks of L,
  sinusoidal B/2 blocks of 2L), the same data, seed, sizes and learning rate schedule;
- perplexity at L, 2L and beyond on the held-out split, every length on the same tokens;
- training speed: full training steps (forward, backward, AdamW step) of both architectures, each at its own
  length and batch, interleaved A B A B in one process after training so that machine noise hits both alike;
  median tokens/s. (The whole training runs' wall times are in the results too, but they are not side by side.)
- peak memory of a training step: what the step allocates (activations, gradients) above the live weights and
  AdamW state (`alibi_lm.measure.peak_memory`: CUDA's allocator peak, or on the CPU the profiler's allocation
  events), plus those persistent bytes.

The attention share of a step grows with L, so the gap between the two grows with L and model width: at the CPU
demo's L = 64 and width 128, attention is a small part of a step, and the measured gap says how small.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path

import torch

from .demo_settings import DemoResult, DemoSettings, Run, markdown_table, results_header
from .machine import default_device

TIMED_STEPS = 20  # interleaved repetitions per model; the medians are stable to a few percent on two cores


def _persistent_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Weights and optimizer state: what lives between training steps (Trainer frees the gradients)."""
    tensors = [*model.parameters(), *model.buffers()]
    tensors += [v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
    return sum(t.numel() * t.element_size() for t in tensors)


def measure_training_steps(
    settings: DemoSettings, runs: Sequence[Run], repeats: int = TIMED_STEPS, progress: bool = True
) -> dict[str, dict[str, float]]:
    """Time and measure one training step of each run's architecture at its own length and batch, side by side.

    Fresh models from the runs' configs (the speed of a step does not depend on the weights), random token ids,
    Trainer's defaults for the rest (the default attention, fp32, AdamW with weight decay). Returns per run name:
    tokens_per_second (median), step_seconds (median), peak_bytes (a step's peak above the persistent bytes),
    persistent_bytes and total_bytes.
    """
    from .measure import peak_memory, run_interleaved
    from .modeling.modeling_alibi import AlibiForCausalLM
    from .progress import progress_bar

    device = torch.device(default_device())
    generator = torch.Generator().manual_seed(settings.seed)
    calls, persistent, tokens = {}, {}, {}
    for run in runs:
        torch.manual_seed(settings.seed)
        model = AlibiForCausalLM(settings.model_config(run.encoding, run.block_size)).to(device).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=0.1)
        ids = torch.randint(0, settings.vocab_size, (run.batch_size, run.block_size), generator=generator)
        ids = ids.to(device)

        def step(model: torch.nn.Module = model, optimizer: torch.optim.Optimizer = optimizer, ids=ids) -> None:
            model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)  # as Trainer's model.zero_grad()

        step()  # the first step allocates the gradients and AdamW's state
        persistent[run.name] = _persistent_bytes(model, optimizer)
        tokens[run.name] = run.batch_size * run.block_size
        calls[run.name] = step
    bar = progress_bar(total=len(calls) * (1 + repeats), desc="timing training steps", disable=not progress)
    measured = run_interleaved(calls, device, repeats, warmup=1, measure_memory=True, progress=bar)
    bar.close()
    out = {}
    for name, m in measured.items():
        if m.error is not None:
            raise RuntimeError(f"the training step of {name} failed while timing it: {m.error}")
        seconds = statistics.median(m.times)
        peak = m.peak_bytes if m.peak_bytes is not None else peak_memory(calls[name], device)
        out[name] = {
            "tokens_per_second": round(tokens[name] / seconds, 1),
            "step_seconds": round(seconds, 8),  # tokens_per_second is derived from it: keep it precise
            "tokens_per_step": tokens[name],
            "peak_bytes": int(peak),
            "persistent_bytes": int(persistent[name]),
            "total_bytes": int(peak + persistent[name]),
            "repeats": repeats,
        }
    return out


def _pair(result: DemoResult) -> tuple[str, str]:
    short, long = (run.name for run in result.settings.runs())
    return short, long


def verdict(result: DemoResult) -> list[str]:
    """What the numbers say about the paper's claim, in sentences made from them (no fixed conclusion)."""
    s = result.settings
    short, long = _pair(result)
    speed = result.speed or {}
    lines = []
    for multiple in (m for m in s.multiples if m >= 2):
        a, b = result.ppl(short, multiple), result.ppl(long, multiple)
        relation = "lower than" if a < b * 0.99 else "higher than" if a > b * 1.01 else "within 1% of"
        lines.append(
            f"- At {multiple * s.block_size} tokens ({multiple}x L): `{short}` {a:.2f}, `{long}` {b:.2f}; ALiBi trained "
            f"at L is {relation} sinusoidal trained at 2L ({(a / b - 1) * 100:+.1f}%)."
        )
    if speed:
        fast = speed[short]["tokens_per_second"] / speed[long]["tokens_per_second"]
        memory = speed[short]["total_bytes"] / speed[long]["total_bytes"]
        step_peak = speed[short]["peak_bytes"] / speed[long]["peak_bytes"]
        lines.append(
            f"- Training speed: `{short}` runs {fast:.2f}x the tokens/s of `{long}` ({(fast - 1) * 100:+.1f}%; the "
            "paper: +11%). Peak memory of a training step, persistent state included: "
            f"{memory:.2f}x ({(memory - 1) * 100:+.1f}%; the paper: -11%); above the persistent state "
            f"(activations): {step_peak:.2f}x."
        )
    return lines


def markdown(result: DemoResult, stem: str) -> str:
    """The results page of `alibi-lm demo --efficiency`."""

    s = result.settings
    short, long = _pair(result)
    speed = result.speed or {}
    tokens_per_step = s.batch_size * s.block_size
    params = result.training[short]["parameters"]
    lines = [
        *results_header(
            result,
            f"Is training short worth it? ALiBi at L = {s.block_size} against sinusoidal at 2L = {2 * s.block_size}",
        ),
        f"Both models: {s.num_hidden_layers} layers, hidden {s.hidden_size}, {s.num_attention_heads} heads, "
        f"{params / 1e6:.2f}M parameters, {s.steps} steps of {tokens_per_step:,} tokens ({s.steps * tokens_per_step / 1e6:.2f}M "
        f"tokens, the same data in the same order), AdamW lr {s.learning_rate:g} with cosine decay, seed {s.seed}. "
        f"`{short}`: ALiBi, {s.batch_size} blocks of {s.block_size} a step. `{long}`: sinusoidal, {s.batch_size // 2} "
        f"blocks of {2 * s.block_size} a step. The paper's claim (Press et al. 2022, abstract; a 1.3B model, L = 1024 "
        "against 2048): the same perplexity at 2L, 11% faster training, 11% less memory.",
        "",
        "Perplexity on the held-out test split, non-overlapping chunks, every length on the same tokens; bold = L "
        "(for both rows: the sinusoidal model was trained at 2L).",
        "",
        markdown_table(result.results, s.block_size),
        "",
    ]
    if speed:
        lines += [
            f"Training steps side by side (`alibi_lm.efficiency.measure_training_steps`: forward, backward, AdamW; "
            f"{speed[short]['repeats']} interleaved steps each, medians; peak memory above the persistent weights "
            "and AdamW state, then with them):",
            "",
            "| model | trained at | tokens/step | step | training tokens/s | peak above state | peak with state | "
            "whole training run |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, info in speed.items():
            run = result.training[name]
            lines.append(
                f"| `{name}` | {run['block_size']} | {info['tokens_per_step']:,} | {info['step_seconds'] * 1e3:.1f} ms | "
                f"{info['tokens_per_second']:,.0f} | {info['peak_bytes'] / 2**20:.1f} MiB | "
                f"{info['total_bytes'] / 2**20:.1f} MiB | {run['seconds']:.0f} s |"
            )
        lines.append("")
    lines += ["What the numbers say:", "", *verdict(result), "", f"![perplexity, speed and memory]({stem}.png)", ""]
    return "\n".join(lines)


def plot(result: DemoResult, path: str | Path) -> Path:
    """Perplexity against length beside training tokens/s and peak memory, for `alibi-lm demo --efficiency`."""
    from .plotting import plot_efficiency

    speed = result.speed or {}
    return plot_efficiency(
        result.results,
        {name: info["tokens_per_second"] for name, info in speed.items()},
        {name: info["total_bytes"] / 2**20 for name, info in speed.items()},
        path,
        title=f"ALiBi trained at L = {result.settings.block_size} against sinusoidal trained at "
        f"2L = {2 * result.settings.block_size}, same tokens",
    )


__all__ = ["TIMED_STEPS", "markdown", "measure_training_steps", "plot", "verdict"]
