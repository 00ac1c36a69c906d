"""`alibi-lm eval`: perplexity at several lengths (`alibi_lm.scoring`) as a table, JSON, CSV, plot or Trainer callback.

Press, Smith & Lewis, "Train Short, Test Long" (ICLR 2022) evaluate a model trained at length L on inputs of length
L, 2L, ..., non-overlapping or with a sliding window; `alibi_lm.scoring` does the scoring, this module reports it.
`alibi-lm eval --probe` (how far back a model copies) and `--by-position` (the loss at each position of a chunk)
run the analysis tools of `alibi_lm.probe`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from .machine import default_device
from .scoring import (
    MODES,
    add_data_arguments,
    as_ids,
    data_text_prefix,
    format_table,
    load_model_and_tokenizer,
    perplexity_at_lengths,
    to_csv,
    to_json,
    training_length,
    validate_lengths,
)


def perplexity_metric_path() -> str:
    """Path of the `evaluate` module; load it offline with `evaluate.load(perplexity_metric_path())`."""
    return str(Path(__file__).parent / "metrics" / "perplexity_at_lengths.py")


# ---------------------------------------------------------------------------------------------------------
# Trainer callback


class ExtrapolationCallback(TrainerCallback):
    """On every Trainer evaluation, compute perplexity at several lengths and report it as `eval_ppl@L`."""

    def __init__(
        self,
        token_ids: Sequence[int] | torch.Tensor,
        lengths: Sequence[int],
        *,
        mode: str = "nonoverlapping",
        stride: int | None = None,
        batch_size: int | None = None,
        trainer: Any = None,
        metric_prefix: str = "eval_ppl@",
    ) -> None:
        """Args:
        token_ids: held-out text as one stream of ids [N], at least max(lengths) long.
        trainer: if given, the numbers go through `trainer.log` (every reporter, the progress printer and
            `state.log_history`); otherwise they are appended to `state.log_history` directly. Either way
            they are added to the metrics `Trainer.evaluate` returns, so `metric_for_best_model` can use them.
        """
        self.lengths = validate_lengths(lengths, mode, stride)
        self.ids = as_ids(token_ids)
        if self.ids.numel() < self.lengths[-1]:
            raise ValueError(
                f"held-out text has {self.ids.numel()} tokens, fewer than the longest length {self.lengths[-1]}"
            )
        self.mode, self.stride, self.batch_size = mode, stride, batch_size
        self.trainer = trainer
        self.metric_prefix = metric_prefix

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: torch.nn.Module | None = None,
        metrics: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> TrainerControl:
        result = perplexity_at_lengths(
            model,
            self.ids,
            self.lengths,
            mode=self.mode,
            stride=self.stride,
            batch_size=self.batch_size,
            progress=False,
        )
        logs = {f"{self.metric_prefix}{r.length}": r.ppl for r in result.lengths}
        if metrics is not None:
            metrics.update(logs)
        if self.trainer is not None:
            self.trainer.log(dict(logs))
        else:
            state.log_history.append({**logs, "step": state.global_step})
        return control


def run(args: argparse.Namespace) -> int:
    analysis = args.probe or args.by_position
    if analysis:
        if args.probe and args.by_position:
            raise ValueError("--probe and --by-position are separate runs: give one of them")
        if args.mode != "nonoverlapping" or args.stride is not None:
            raise ValueError("--probe and --by-position score their own sequences: --mode and --stride do not apply")
        if args.by_position and args.lengths is not None and max(args.lengths) < 2:
            raise ValueError(f"--by-position needs a length of at least 2 tokens, got {max(args.lengths)}")
    else:
        # Fail on bad settings before loading anything; without --lengths, a stand-in length of `stride` checks the rest.
        validate_lengths(args.lengths or [max(2, args.stride or 2)], args.mode, args.stride)
    if args.max_tokens is not None and args.max_tokens < 2:
        raise ValueError(f"--max-tokens must be at least 2, got {args.max_tokens}")
    missing = [m for m in args.models if not Path(m).is_dir()]
    if missing:
        raise FileNotFoundError(f"model folder(s) not found: {', '.join(missing)}")
    texts = data_text_prefix(args)  # the source, split and column checked now
    if args.max_tokens is None:
        texts.read_all()  # every text is used: a bad record is named before a model loads
    device = args.device or default_device()
    if analysis:
        from .probe import run_by_position, run_probe

        return (run_probe if args.probe else run_by_position)(args, texts, device)
    lengths = args.lengths
    results = []
    for path in args.models:
        model, tokenizer = load_model_and_tokenizer(path, device, args.dtype)
        if lengths is None:
            # Default ladder: 1x, 2x, 4x, 8x, 16x the first model's training length, as in the paper's figures.
            train_len = training_length(model.config)
            if not train_len:
                raise ValueError(f"{path}: config has no train_length or max_position_embeddings; pass --lengths")
            lengths = [train_len * k for k in (1, 2, 4, 8, 16)]
        results.append(
            perplexity_at_lengths(
                model,
                texts=texts.up_to(tokenizer, args.max_tokens),  # read as far as --max-tokens needs
                tokenizer=tokenizer,
                lengths=lengths,
                mode=args.mode,
                stride=args.stride,
                batch_size=args.batch_size,
                max_tokens=args.max_tokens,
                model_name=path,
                progress=not args.no_progress,
            )
        )
        del model
    print(format_table(results))
    if args.json:
        to_json(results, args.json)
    if args.csv:
        to_csv(results, args.csv)
    if args.plot:
        from .plotting import plot_perplexity

        plot_perplexity(results, args.plot)
    return 0


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="perplexity at several evaluation lengths (the paper's extrapolation test)",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("models", nargs="+", metavar="MODEL", help="model folder(s) written by save_pretrained")
    add_data_arguments(parser)
    parser.add_argument(
        "--lengths", type=int, nargs="+", help="evaluation lengths (default: 1, 2, 4, 8, 16 x the training length)"
    )
    parser.add_argument("--mode", choices=MODES, default="nonoverlapping")
    parser.add_argument("--stride", type=int, help="sliding mode: tokens scored per window (1 = paper's Table 15)")
    parser.add_argument("--batch-size", type=int, help="windows per forward (default: 8192 // length)")
    parser.add_argument("--max-tokens", type=int, help="use at most this many tokens of the text")
    parser.add_argument("--device", help="default: cuda if available, else cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16", "auto"], default="float32")
    parser.add_argument(
        "--plot", metavar="FILE", help="write a PNG: perplexity against length (or the probe's or by-position curves)"
    )
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")
    parser.add_argument("--csv", metavar="FILE", help="write the results as CSV")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    parser.add_argument(
        "--probe", action="store_true", help="the copy probe instead of perplexity: a span repeated after a gap"
    )
    parser.add_argument("--probe-span", type=int, default=32, help="tokens in the repeated span (default 32)")
    parser.add_argument(
        "--probe-gaps", type=int, nargs="+", help="gaps d between the two copies (default: 0, L/2, L, 4L, 16L)"
    )
    parser.add_argument("--probe-samples", type=int, default=8, help="spans per gap (default 8)")
    parser.add_argument(
        "--by-position",
        action="store_true",
        help="the mean loss at each position of non-overlapping chunks of the longest --lengths (default 16 x the "
        "training length): the early-token curse",
    )
    parser.set_defaults(func=run)


__all__ = ["ExtrapolationCallback", "add_subparser", "perplexity_metric_path", "run"]
