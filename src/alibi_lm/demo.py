"""`alibi-lm demo`: train short, test long, on a laptop's CPU in a few minutes.

Reproduces the central experiment of Press, Smith & Lewis, "Train Short, Test Long: Attention with Linear Biases
Enables Input Length Extrapolation", ICLR 2022 (https://arxiv.org/abs/2108.12409), at toy scale:

1. train a small causal LM at a short length L on the offline English Wikipedia summaries (train split), with the
   project's runner (`alibi_lm.train.train`, i.e. Trainer);
2. score the held-out test split in non-overlapping chunks of 1x, 2x, 4x, 8x and 16x L, every length on the same
   tokens (`alibi_lm.evaluation.perplexity_at_lengths`), print the table, write it as Markdown and JSON, and plot it;
3. generate text that runs well past L.

By default ALiBi and the sinusoidal baseline train side by side on the same tokens, so the first run shows the paper's
contrast: ALiBi's perplexity stays flat past L while sinusoidal's blows up. `--encodings alibi` trains ALiBi alone;
`--compare` trains every position encoding of the paper's comparison (ALiBi, sinusoidal, rotary, T5 bias, none) with
the same data, steps, sizes and seed and puts them in one table and plot.
`--efficiency` tests the paper's second claim instead: ALiBi trained at L against sinusoidal trained at 2L on the
same tokens, with training speed and memory (`alibi_lm.efficiency`). `--repeat-span-fraction` mixes repeated spans
into the training blocks, a mix meant to teach copying (for the copy probe, `alibi-lm eval --probe`; the models that
copy are made by `recipes/experiments/train_copier.py`).

    alibi-lm demo [--encodings alibi | --compare | --efficiency] [--output-dir runs/demo] [--overwrite] [--steps N]
                  [--block-size L] [--seed S] [--no-generate] [--no-progress]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import torch
from transformers import HfArgumentParser, PreTrainedTokenizerBase, set_seed

from .blocks import cached_bpe_tokenizer
from .card import RESULTS_FILE
from .data import OFFLINE_WIKIPEDIA, DataArguments, load_raw_datasets
from .demo_settings import DemoResult, DemoSettings, Run, markdown_table, results_header
from .loading import load_model
from .progress import is_terminal
from .scoring import PerplexityResult, format_table, perplexity_at_lengths, tokenize_texts


def _say(message: str) -> None:
    print(message, flush=True)


def _training_run(settings: DemoSettings, run: Run, tokenizer_dir: Path, data_args: DataArguments) -> Any:
    """Train one model with the project's runner; return its `TrainResult`."""
    from .train import AlibiTrainingArguments, ModelArguments, train

    encoding = run.encoding
    config = settings.model_config(encoding, run.block_size)
    data_args = replace(data_args, block_size=run.block_size)
    model_args = ModelArguments(
        tokenizer_name=str(tokenizer_dir),
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        position_encoding=encoding,
        embedding_layer_norm=config.embedding_layer_norm,
    )
    warmup = settings.warmup_steps if settings.warmup_steps is not None else max(1, settings.steps // 20)
    training_args = AlibiTrainingArguments(
        output_dir=str(Path(settings.output_dir) / run.name),
        overwrite_output_dir=settings.overwrite,
        max_steps=settings.steps,
        per_device_train_batch_size=run.batch_size,
        learning_rate=settings.learning_rate,
        warmup_steps=warmup,
        lr_scheduler_type="cosine",
        weight_decay=0.1,
        logging_steps=max(1, settings.steps // 10),
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        seed=settings.seed,
        data_seed=settings.seed,
        disable_tqdm=not settings.progress,
        use_cpu=not torch.accelerator.is_available(),
        # Trainer's token count gathers and syncs every step: ~2.5 ms, 10% of a step of these tiny models on two CPU
        # cores (measured 2026-11-28). The demo reports its own timings.
        include_num_input_tokens_seen=False,
    )
    return train(model_args, data_args, training_args)


def _generation(
    settings: DemoSettings, model: Any, tokenizer: PreTrainedTokenizerBase, held_out: Sequence[str], encoding: str
) -> dict[str, Any]:
    """Continue the opening of a held-out article, sampled under a fixed seed, to several times L tokens."""
    # A prompt of L/2 tokens, so the continuation crosses L early and then runs several times past it.
    prompt_length = max(1, settings.block_size // 2)
    # The first held-out article long enough, preferring plain ASCII text: a prompt cut inside a multi-byte
    # character would print as replacement characters.
    articles = sorted(held_out, key=lambda text: not text[:1000].isascii())
    # Tokenized one at a time, stopping at the first that is long enough (usually the first).
    article_ids = next(ids for text in articles if len(ids := tokenizer(text)["input_ids"]) > prompt_length)
    prompt_ids = torch.tensor([article_ids[:prompt_length]], device=model.device)  # [1, L/2]
    sampling = {"do_sample": True, "temperature": 0.8, "top_k": 40}
    set_seed(settings.seed)
    with torch.inference_mode():
        output = model.generate(
            input_ids=prompt_ids,
            attention_mask=torch.ones_like(prompt_ids),
            max_new_tokens=settings.new_tokens,
            # eos only ends a Wikipedia summary; without this the sample could stop before it passes L.
            min_new_tokens=settings.new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            **sampling,
        )  # [1, L/2 + new_tokens]
    return {
        "model": encoding,
        "prompt": tokenizer.decode(output[0, :prompt_length]),
        "text": tokenizer.decode(output[0, prompt_length:]),
        "prompt_tokens": prompt_length,
        "total_tokens": output.shape[1],
        "training_length": settings.block_size,
        "sampling": {**sampling, "seed": settings.seed},
    }


def _markdown(result: DemoResult, stem: str) -> str:
    s = result.settings
    params = next(iter(result.training.values()))["parameters"]
    tokens_per_step = s.batch_size * s.block_size
    first = result.results[0]
    lines = [
        *results_header(result, f"Train short, test long: {', '.join(s.encodings)}"),
        (
            f"Each model: {s.num_hidden_layers} layers, hidden {s.hidden_size}, {s.num_attention_heads} heads, "
            f"{params / 1e6:.2f}M parameters (tied embedding over a {s.vocab_size}-token byte-level BPE), trained at "
            f"L = {s.block_size} for {s.steps} steps of {s.batch_size} x {s.block_size} = {tokens_per_step:,} tokens "
            f"({s.steps * tokens_per_step / 1e6:.2f}M tokens) on the offline English Wikipedia summaries (train split), "
            f"AdamW lr {s.learning_rate:g} with cosine decay, seed {s.seed}. Only `position_encoding` differs between "
            "the models, and each is `AlibiConfig`'s default architecture (MPT's: no biases, no embedding LayerNorm), "
            "so the ALiBi model exports to MPT and GGUF as it is (`alibi-lm export`)."
            + (
                f" Training mix: in {s.repeat_span_fraction:.0%} of the training blocks a span of L/16 to L/4 random "
                "tokens comes twice, with up to L - 2 x span tokens of text between the copies "
                "(`alibi_lm.blocks.repeat_spans`; the first copy is not scored), a mix meant to teach copying."
                if s.repeat_span_fraction
                else ""
            )
        ),
        "",
        (
            f"Perplexity on the held-out test split ({first.span_tokens:,} tokens, the same tokens at every length), "
            "non-overlapping chunks of each evaluation length (Press et al. 2022, section 4); bold = the training length."
        ),
        "",
        markdown_table(result.results, s.block_size),
        "",
        *([line, ""] if (line := contrast(result)) else []),
        "| model | training time | training loss, last tenth of the steps |",
        "|---|---:|---:|",
    ]
    for encoding, info in result.training.items():
        lines.append(f"| `{encoding}` | {info['seconds']:.0f} s | {info['final_loss']:.3f} |")
    lines += ["", f"![perplexity against evaluation length]({stem}.png)", ""]
    if result.generation:
        g = result.generation
        lines += [
            (
                f"Generated by `{g['model']}` (sampled, temperature {g['sampling']['temperature']}, top-k "
                f"{g['sampling']['top_k']}, seed {g['sampling']['seed']}): a {g['prompt_tokens']}-token prompt from a "
                f"held-out article, continued to {g['total_tokens']} tokens, {g['total_tokens'] / s.block_size:.1f}x "
                "the training length."
            ),
            "",
            "> *Prompt:* " + g["prompt"].strip().replace("\n", "\n> "),
            ">",
            "> *Continuation:* " + g["text"].strip().replace("\n", "\n> "),
            "",
        ]
    return "\n".join(lines)


def _check_output_dir(out: Path, overwrite: bool) -> None:
    """Refuse, before any work, to write into a folder that holds something, unless told to overwrite."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"output_dir {out} is a file, not a folder: choose another --output-dir")
    if overwrite or not out.exists():
        return
    entries = sorted(f"{p.name}/" if p.is_dir() else p.name for p in out.iterdir())
    if entries:
        shown = ", ".join(entries[:3]) + (f", and {len(entries) - 3} more" if len(entries) > 3 else "")
        raise ValueError(
            f"output_dir {out} is not empty ({shown}): pass --overwrite to write this run over it or choose "
            "another --output-dir"
        )


def run_demo(settings: DemoSettings) -> DemoResult:
    """Train every encoding of `settings`, evaluate each at every length, generate, and write the results.

    Writes to `settings.output_dir`: one model folder per run (with its `extrapolation.json`), the shared
    tokenizer, and `{stem}.md`, `{stem}.json`, `{stem}.png` where stem is "demo", "demo-compare" for `--compare`
    and "efficiency" for `--efficiency`. Without `settings.progress`, datasets' and transformers' own progress bars
    are off too for the run.

    Raises:
        ValueError: `settings.output_dir` is not empty and `settings.overwrite` is False, or the held-out text is
            shorter than the longest evaluation length.
    """
    # Off a terminal, datasets' and transformers' tqdm bars would leave every redraw in the log.
    with _library_progress_bars(settings.progress and is_terminal()):
        return _run_demo(settings)


@contextlib.contextmanager
def _library_progress_bars(enabled: bool) -> Iterator[None]:
    """datasets' and transformers' progress bars off for the block when not `enabled`, as they were after it."""
    import datasets
    from transformers.utils import logging as hf_logging

    if enabled:
        yield
        return
    datasets_on, transformers_on = datasets.is_progress_bar_enabled(), hf_logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if datasets_on:
            datasets.enable_progress_bars()
        if transformers_on:
            hf_logging.enable_progress_bar()


def contrast(result: DemoResult) -> str | None:
    """One line: every model's perplexity at the longest evaluation length over its own at L (None if only L)."""
    s = result.settings
    multiple = s.multiples[-1]
    if multiple == 1 or 1 not in s.multiples or s.efficiency:
        return None
    ratios = ", ".join(f"{r.model_name} {result.ppl(r.model_name, multiple) / result.ppl(r.model_name, 1):.2f}x"
                       for r in result.results)  # fmt: skip
    return f"Perplexity at {multiple} x L = {multiple * s.block_size} tokens, over each model's at L: {ratios}."


def _run_demo(settings: DemoSettings) -> DemoResult:
    start = time.perf_counter()
    out = Path(settings.output_dir)
    _check_output_dir(out, settings.overwrite)
    out.mkdir(parents=True, exist_ok=True)
    data_args = DataArguments(
        dataset_name=OFFLINE_WIKIPEDIA,
        dataset_config_name=settings.topic,
        block_size=settings.block_size,
        cache_dir=settings.cache_dir,
        repeat_span_fraction=settings.repeat_span_fraction,
    )
    _say(f"Loading the offline Wikipedia summaries{f' (topic {settings.topic})' if settings.topic else ''} ...")
    raw = load_raw_datasets(data_args)
    # One tokenizer for every model, trained here, so every model is scored on exactly the same token ids.
    tokenizer = cached_bpe_tokenizer(raw["train"], settings.vocab_size, data_args.resolved_cache_dir())
    tokenizer_dir = out / "tokenizer"
    tokenizer.save_pretrained(tokenizer_dir)
    held_out = raw["test"]["text"]
    ids = tokenize_texts(held_out, tokenizer)
    if settings.max_eval_tokens is not None:
        ids = ids[: settings.max_eval_tokens]
    longest = settings.lengths[-1]
    if ids.numel() < longest:
        raise ValueError(
            f"the held-out text has {ids.numel()} tokens, fewer than the longest evaluation length {longest} "
            f"({settings.multiples[-1]} x block_size {settings.block_size}); lower block_size or the multiples"
        )
    _say(
        f"Train split {len(raw['train'])} articles; held-out test split {len(held_out)} articles = {ids.numel():,} "
        f"tokens. Training length L = {settings.block_size}; evaluation lengths {settings.lengths}."
    )

    results: list[PerplexityResult] = []
    training: dict[str, dict[str, float]] = {}
    models: dict[str, Any] = {}
    runs = settings.runs()
    for index, spec in enumerate(runs, 1):
        _say(
            f"\n[{index}/{len(runs)}] Training position_encoding={spec.encoding!r} at {spec.block_size} tokens, "
            f"{spec.batch_size} blocks a step, for {settings.steps} steps"
        )
        began = time.perf_counter()
        run = _training_run(settings, spec, tokenizer_dir, data_args)
        seconds = time.perf_counter() - began
        training[spec.name] = {
            "seconds": round(seconds, 1),
            # The last logged loss (over the last tenth of the steps); Trainer's `train_loss` averages the whole run.
            "final_loss": round(
                next((log["loss"] for log in reversed(run.log_history) if "loss" in log), math.nan), 4
            ),
            "steps": run.global_step,
            "block_size": spec.block_size,
            "batch_size": spec.batch_size,
        }
        model = load_model(run.output_dir).eval()
        training[spec.name]["parameters"] = sum(p.numel() for p in model.parameters())
        _say(f"[{index}/{len(runs)}] Evaluating {spec.name!r} at {settings.lengths}")
        result = perplexity_at_lengths(model, ids, settings.lengths, model_name=spec.name, progress=settings.progress)
        # `alibi-lm push` puts this table into the model card.
        result.to_json(Path(run.output_dir) / RESULTS_FILE)
        results.append(result)
        models[spec.name] = model
        _say(result.to_table())

    generation = speed = None
    if settings.efficiency:
        from .efficiency import measure_training_steps

        _say("\nTiming training steps of both models side by side (forward, backward, AdamW) ...")
        speed = measure_training_steps(settings, runs, progress=settings.progress)
    elif settings.generate:
        encoding = "alibi" if "alibi" in models else settings.encodings[0]
        _say(f"\nGenerating {settings.new_tokens} tokens with {encoding!r} (trained at L = {settings.block_size}) ...")
        generation = _generation(settings, models[encoding], tokenizer, held_out, encoding)

    result = DemoResult(settings, results, training, generation, speed, seconds=time.perf_counter() - start)
    stem = settings.stem
    title = f"Trained at L = {settings.block_size}, evaluated at up to {longest} tokens"
    if settings.efficiency:
        from .efficiency import markdown as efficiency_markdown
        from .efficiency import plot

        png = plot(result, out / f"{stem}.png")
        text = efficiency_markdown(result, stem)
    else:
        from .plotting import plot_perplexity

        png = plot_perplexity(results, out / f"{stem}.png", title=title)
        text = _markdown(result, stem)
    result.files = {"json": out / f"{stem}.json", "png": png, "markdown": out / f"{stem}.md"}
    result.files["json"].write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    result.files["markdown"].write_text(text)

    _say("\n" + format_table(results))
    if generation:
        _say(
            f"\n--- {generation['model']}: prompt ({generation['prompt_tokens']} tokens from a held-out article) ---\n"
            f"{generation['prompt']}\n--- continuation, to {generation['total_tokens']} tokens = "
            f"{generation['total_tokens'] / settings.block_size:.1f} x the training length ---\n{generation['text']}"
        )
    if line := contrast(result):
        _say("\n" + line)
    _say(f"\nWrote {', '.join(str(p) for p in result.files.values())} in {result.seconds / 60:.1f} min.")
    return result


# ---------------------------------------------------------------------------------------------------------
# CLI: alibi-lm demo


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    """Register `alibi-lm demo`, its flags made from the `DemoSettings` fields."""
    parser = subparsers.add_parser(
        "demo",
        # The subcommand parser is a plain ArgumentParser; `parents` copies the dataclass's arguments into it.
        parents=[HfArgumentParser(DemoSettings, add_help=False)],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        help="train short, test long: the paper's extrapolation experiment in a few CPU minutes",
        description=__doc__.splitlines()[0],
    )
    parser.set_defaults(func=run)


def settings_from_args(args: argparse.Namespace) -> DemoSettings:
    """The `DemoSettings` of parsed `alibi-lm demo` arguments (validated: bad values raise ValueError)."""
    return DemoSettings(**{setting.name: getattr(args, setting.name) for setting in fields(DemoSettings)})


def run(args: argparse.Namespace) -> int:
    """Run the demo from parsed command-line arguments."""
    run_demo(settings_from_args(args))
    return 0


__all__ = ["contrast", "run_demo", "settings_from_args"]
