"""`alibi-lm generate`: stream a continuation of a prompt from a checkpoint, token by token.

ALiBi: Press, Smith & Lewis, "Train Short, Test Long: Attention with Linear Biases Enables Input Length
Extrapolation", ICLR 2022. https://arxiv.org/abs/2108.12409

ALiBi has no position table, so `--max-new-tokens` may take the sequence past the training length
(`train_length`) with no setting to change, up to the context `max_position_embeddings` (16 x it) with no
warning, and further still (transformers then prints a reminder).

    alibi-lm generate MODEL --prompt "The meaning of life is" --max-new-tokens 100 [--do-sample --temperature 0.8]
"""

from __future__ import annotations

import argparse
import math
import numbers
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase, TextStreamer, set_seed
from transformers.generation.streamers import BaseStreamer

from .loading import load_model
from .machine import default_device

# A bound, not a budget: a slip such as 1e20 must be refused, not left generating for ever.
MAX_NEW_TOKENS = 1_000_000
# argument -> (its type, the test its value must pass, the allowed values as the error message says them).
# The Python API and the command line check the same table.
BOUNDS: dict[str, tuple[type, Callable[[float], bool], str]] = {
    "max_new_tokens": (int, lambda v: 1 <= v <= MAX_NEW_TOKENS, f"an integer in [1, {MAX_NEW_TOKENS}]"),
    "temperature": (float, lambda v: math.isfinite(v) and v > 0, "a finite number > 0"),
    "top_k": (int, lambda v: v >= 0, "an integer >= 0 (0 turns top-k off)"),
    "top_p": (float, lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "repetition_penalty": (float, lambda v: math.isfinite(v) and v > 0, "a finite number > 0 (1.0 = no penalty)"),
}


def check_bounds(**values: object) -> None:
    """Raise ValueError naming the first argument in `values` that is outside its `BOUNDS`."""
    for name, value in values.items():
        kind, ok, allowed = BOUNDS[name]
        number = numbers.Integral if kind is int else numbers.Real
        if isinstance(value, bool) or not isinstance(value, number) or not ok(value):
            raise ValueError(f"{name} must be {allowed}, got {value!r}")


def _bounded(name: str) -> Callable[[str], int | float]:
    """An argparse `type` for `name`: argparse prints the message after the flag, `argument --flag: ...`."""
    kind, _, allowed = BOUNDS[name]

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
            check_bounds(**{name: value})
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text!r}") from None
        return value

    return parse


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt: str,
    *,
    max_new_tokens: int = 50,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 50,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    seed: int | None = None,
    streamer: BaseStreamer | None = None,
) -> str:
    """Continue `prompt`, greedily unless `do_sample`, and return the new text (prompt excluded).

    Tokens go to `streamer` as they are produced, so a `TextStreamer` prints them as they come.

    Raises:
        ValueError: `prompt` is empty, or an argument is outside its `BOUNDS` (checked whether or not sampling).
    """
    check_bounds(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        repetition_penalty=repetition_penalty,
    )
    if not prompt:
        raise ValueError("prompt must not be empty")
    if seed is not None:
        set_seed(seed)
    inputs = tokenizer(prompt, return_tensors="pt").to(model.device)
    # Passing sampling knobs with do_sample=False makes transformers warn that they are ignored.
    sampling = (
        {"do_sample": True, "temperature": temperature, "top_k": top_k, "top_p": top_p}
        if do_sample
        else {"do_sample": False}
    )
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.inference_mode():
        output = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            repetition_penalty=repetition_penalty,
            pad_token_id=pad_token_id,
            streamer=streamer,
            **sampling,
        )
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("generate", help="stream a continuation of a prompt from a checkpoint")
    parser.add_argument("model", help="checkpoint folder or Hub repo id")
    parser.add_argument("--prompt", required=True, help="text to continue")
    parser.add_argument(
        "--max-new-tokens",
        type=_bounded("max_new_tokens"),
        default=50,
        help=f"tokens to generate, at most {MAX_NEW_TOKENS} (may exceed the training length)",
    )
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder or repo id (default: MODEL)")
    parser.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    parser.add_argument(
        "--temperature", type=_bounded("temperature"), default=1.0, help="softmax temperature when sampling, > 0"
    )
    parser.add_argument(
        "--top-k", type=_bounded("top_k"), default=50, help="keep the k most likely tokens when sampling, 0 = all"
    )
    parser.add_argument(
        "--top-p", type=_bounded("top_p"), default=1.0, help="nucleus sampling mass when sampling, in (0, 1]"
    )
    parser.add_argument(
        "--repetition-penalty", type=_bounded("repetition_penalty"), default=1.0, help="CTRL-style penalty, 1.0 = none"
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed for sampling")
    parser.add_argument("--device", default=default_device(), help="torch device")
    parser.add_argument(
        "--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"], help="weights dtype"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model = load_model(args.model, dtype=args.dtype).to(args.device).eval()
    tokenizer_source = args.tokenizer or args.model
    if Path(tokenizer_source).is_dir() and not any(Path(tokenizer_source).glob("tokenizer*")):
        raise FileNotFoundError(f"no tokenizer files in {tokenizer_source}; pass --tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    # The prompt is decoded together with the continuation, so word boundaries print right for any tokenizer.
    streamer = TextStreamer(tokenizer, skip_prompt=False, skip_special_tokens=True)
    generate(
        model,
        tokenizer,
        args.prompt,
        max_new_tokens=args.max_new_tokens,
        do_sample=args.do_sample,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
        streamer=streamer,
    )
    return 0
