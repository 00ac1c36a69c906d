"""What `alibi-lm demo` runs and what it reports: its settings (the command-line options), runs and results, and the
header and table that every results page made from it opens with (`demo` and `efficiency` both write such pages).
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from transformers.hf_argparser import HfArg

from . import __version__, machine
from .modeling.configuration_alibi import POSITION_ENCODINGS, AlibiConfig
from .scoring import PerplexityResult

ENCODINGS = POSITION_ENCODINGS  # the paper's comparison: every encoding the model has


DEFAULT_ENCODINGS = ("alibi", "sinusoidal")  # the paper's contrast, in the first command a newcomer runs


MULTIPLES = (1, 2, 4, 8, 16)


@dataclass(frozen=True)
class Run:
    """One model of a demo: its folder name, position encoding, training length and blocks per step."""

    name: str
    encoding: str
    block_size: int
    batch_size: int


@dataclass
class DemoSettings:
    """Everything that defines a demo run; every encoding gets the same data, steps, sizes and seed.

    Each field is an `alibi-lm demo` flag, made by `HfArgumentParser`: `--field-name` or an alias, and `--no-field-name`
    for a boolean that defaults to True.
    """

    output_dir: str = HfArg(default="runs/demo", help="where the models, tokenizer and results go")
    overwrite: bool = HfArg(
        default=False, help="write over a non-empty --output-dir (without it the demo refuses one)"
    )
    compare: bool = HfArg(
        default=False,
        help=f"train every encoding of the paper's comparison, {', '.join(ENCODINGS)} (not with --encodings)",
    )
    efficiency: bool = HfArg(
        default=False,
        help="the paper's efficiency claim: ALiBi trained at L against sinusoidal trained at 2L on the same tokens "
        "(half the blocks per step), perplexity at 2L and beyond, training tokens/s and peak memory (not with "
        "--compare or --encodings)",
    )
    # None: alibi and sinusoidal, or every encoding with --compare. Never None after __post_init__.
    encodings: list[str] | None = HfArg(
        default=None,
        help=f"train these position encodings, of {', '.join(ENCODINGS)} (`--encodings alibi` for ALiBi alone); if "
        f"unset, {' and '.join(DEFAULT_ENCODINGS)}",
        metadata={"metavar": "ENC"},
    )
    # Two models in under 5 minutes on two CPU cores (2026-12-04, AMD EPYC: 3.7 min; 2026-12-06, Intel Xeon: 3.8). 5,000
    # steps of 16 x 32 = 512 tokens: 2.6M tokens, ~100 s a model. Sinusoidal's blow-up grows with training steps more
    # than with tokens: at 16 L it is 2.64x (AMD) / 2.66x (Intel) its perplexity at L with these defaults, 1.42x with
    # 2,500 steps of 16 x 64 (BPE 2048) in the same time, while ALiBi's stays below its own at L (0.98x / 0.97x).
    block_size: int = HfArg(default=32, help="the training length L, in tokens")
    steps: int = HfArg(default=5_000, help="training steps per model")
    batch_size: int = HfArg(default=16, help="blocks of L tokens per step")
    # A 0.53M-parameter model takes a high AdamW rate.
    learning_rate: float = HfArg(default=8e-3, help="peak AdamW learning rate")
    warmup_steps: int | None = HfArg(default=None, help="linear warmup steps; if unset, 5%% of the steps")
    hidden_size: int = HfArg(default=128, help="model width")
    num_hidden_layers: int = HfArg(default=2, help="decoder layers", aliases=["--layers"])
    # ALiBi slopes 1/2, 1/4, ..., 1/256, the paper's set for 8 heads.
    num_attention_heads: int = HfArg(default=8, help="attention heads", aliases=["--heads"])
    # Byte-level BPE trained on the training split (the LM head dominates a step).
    vocab_size: int = HfArg(default=1024, help="BPE vocabulary size, at least 257")
    multiples: list[int] = HfArg(
        default_factory=lambda: list(MULTIPLES),
        help="evaluation lengths, as multiples of L",
        metadata={"metavar": "M"},
    )
    seed: int = HfArg(default=0, help="seed for initialisation, data order and sampling")
    repeat_span_fraction: float = HfArg(
        default=0.0,
        help="fraction of training blocks into which a span of random tokens is written twice, a mix meant to teach "
        "copying (alibi_lm.blocks.repeat_spans; too weak for the demo's 2-layer models, see "
        "recipes/results/copy-probe-attempt.md); 0 trains on the text as it is",
    )
    topic: str | None = HfArg(
        default=None, help="use only the Wikipedia articles of one topic, e.g. Mathematics; if unset, all"
    )
    max_eval_tokens: int | None = HfArg(
        default=None, help="score at most this many held-out tokens; if unset, the whole test split"
    )
    generate: bool = HfArg(default=True, help="generate text past L with the trained model (--no-generate skips it)")
    generate_tokens: int | None = HfArg(default=None, help="new tokens to generate; if unset, 4 x L")
    cache_dir: str | None = HfArg(default=None, help="tokenizer and token-block cache; if unset, the datasets cache")
    progress: bool = HfArg(
        default=True,
        help="show progress: bars on a terminal, a line every 5%% in a log (--no-progress hides them, datasets' and "
        "transformers' bars too)",
    )

    def __post_init__(self) -> None:
        if isinstance(self.encodings, str):
            self.encodings = [self.encodings]
        if self.compare:
            if self.encodings is not None and tuple(self.encodings) != ENCODINGS:
                raise ValueError(
                    f"--compare trains every encoding ({', '.join(ENCODINGS)}): give --compare or --encodings, not "
                    f"both (got --encodings {' '.join(self.encodings)})"
                )
            self.encodings = list(ENCODINGS)
        if self.efficiency:
            if self.compare or self.encodings is not None and self.encodings != ["alibi", "sinusoidal"]:
                raise ValueError(
                    "--efficiency trains its own pair (alibi at L, sinusoidal at 2L): give it without --compare or "
                    "--encodings"
                )
            if self.batch_size < 2 or self.batch_size % 2:
                raise ValueError(
                    f"--efficiency halves the blocks per step at 2L so both models see the same tokens: batch_size "
                    f"must be even, got {self.batch_size}"
                )
            self.encodings = ["alibi", "sinusoidal"]
        self.encodings = list(DEFAULT_ENCODINGS) if self.encodings is None else list(self.encodings)
        # One spelling per run, so settings compare equal however they were given.
        self.compare = tuple(self.encodings) == ENCODINGS
        if not self.encodings:
            raise ValueError(f"encodings is empty: give at least one of {', '.join(ENCODINGS)}")
        unknown = [e for e in self.encodings if e not in ENCODINGS]
        if unknown:
            raise ValueError(f"unknown position encoding(s) {unknown}: choose from {', '.join(ENCODINGS)}")
        if len(set(self.encodings)) != len(self.encodings):
            raise ValueError(f"encodings has duplicates: {list(self.encodings)}")
        if self.block_size < 2:
            raise ValueError(f"block_size must be at least 2 (one input and one target token), got {self.block_size}")
        for name in ("steps", "batch_size", "vocab_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.vocab_size < 257:
            raise ValueError(
                f"vocab_size must be at least 257 (256 bytes + eos) for byte-level BPE, got {self.vocab_size}"
            )
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.warmup_steps is not None and not 0 <= self.warmup_steps <= self.steps:
            raise ValueError(f"warmup_steps must be in [0, steps={self.steps}], got {self.warmup_steps}")
        self.multiples = sorted(set(self.multiples))
        if not self.multiples or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in self.multiples):
            raise ValueError(f"multiples must be positive integers, got {list(self.multiples)}")
        if self.max_eval_tokens is not None and self.max_eval_tokens < self.block_size * self.multiples[-1]:
            raise ValueError(
                f"max_eval_tokens={self.max_eval_tokens} is shorter than the longest evaluation length "
                f"{self.block_size * self.multiples[-1]}"
            )
        if not 0.0 <= self.repeat_span_fraction <= 1.0:
            raise ValueError(f"repeat_span_fraction must be in [0, 1], got {self.repeat_span_fraction}")
        if self.generate_tokens is not None and self.generate_tokens < 1:
            raise ValueError(f"generate_tokens must be at least 1, got {self.generate_tokens}")
        # Fail on an impossible architecture now, not after the data is loaded; the config names the field.
        for run in self.runs():
            self.model_config(run.encoding, run.block_size)

    def runs(self) -> list[Run]:
        """The models to train, in order. With `efficiency`, sinusoidal trains at 2L on half the blocks per step."""
        length, batch = self.block_size, self.batch_size
        if self.efficiency:
            return [Run("alibi", "alibi", length, batch), Run("sinusoidal-2L", "sinusoidal", 2 * length, batch // 2)]
        return [Run(encoding, encoding, length, batch) for encoding in self.encodings]

    @property
    def stem(self) -> str:
        """The results files' name: demo.md, demo-compare.md for `--compare`'s five models, efficiency.md."""
        return "efficiency" if self.efficiency else "demo-compare" if self.compare else "demo"

    @property
    def lengths(self) -> list[int]:
        return [self.block_size * m for m in self.multiples]

    @property
    def new_tokens(self) -> int:
        return self.generate_tokens or 4 * self.block_size

    def command(self) -> str:
        """The `alibi-lm demo` command line that reproduces these settings (defaults and --overwrite left out).

        --overwrite is left out so that the command written into the results never replaces a folder by itself.
        """
        words = ["alibi-lm", "demo"]
        defaults = DemoSettings()
        for setting in fields(self):
            name, value = setting.name, getattr(self, setting.name)
            implied = name == "encodings" and (self.compare or self.efficiency)
            if value == getattr(defaults, name) or name == "overwrite" or implied:
                continue
            flag = setting.metadata.get("aliases", [f"--{name.replace('_', '-')}"])[0]
            if isinstance(value, bool):
                words.append(flag if value else f"--no-{name.replace('_', '-')}")
            elif isinstance(value, list):
                words += [flag, *map(str, value)]
            else:
                words += [flag, str(value)]
        return shlex.join(words)

    def model_config(self, encoding: str, block_size: int | None = None) -> AlibiConfig:
        """The architecture for one encoding; only `position_encoding` differs between the compared models."""
        return AlibiConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            train_length=block_size or self.block_size,
            position_encoding=encoding,
        )


@dataclass
class DemoResult:
    """What a demo run leaves: perplexities per model, the generated text and the files written."""

    settings: DemoSettings
    results: list[PerplexityResult]
    training: dict[str, dict[str, float]]  # run name -> {"seconds", "final_loss", "steps", "parameters"}
    generation: dict[str, Any] | None
    speed: dict[str, dict[str, float]] | None = None  # run name -> efficiency.measure_training_steps' entry
    files: dict[str, Path] = field(default_factory=dict)
    seconds: float = 0.0

    def ppl(self, encoding: str, multiple: int) -> float:
        """Perplexity of `encoding`'s model at `multiple` x L."""
        result = next(r for r in self.results if r.model_name == encoding)
        return result[self.settings.block_size * multiple].ppl

    def to_dict(self) -> dict[str, Any]:
        return {
            "command": self.settings.command(),
            "alibi_lm_version": __version__,
            "torch_version": torch.__version__,
            "device": _device(),
            "settings": asdict(self.settings),
            "seconds": round(self.seconds, 1),
            "training": self.training,
            "results": [r.to_dict() for r in self.results],
            "generation": self.generation,
            **({"speed": self.speed} if self.speed is not None else {}),
        }


def markdown_table(results: Sequence[PerplexityResult], training_length: int) -> str:
    """A Markdown table: one row per evaluation length, one perplexity column per model, and the 16x/1x ratio."""
    lengths = sorted({r.length for res in results for r in res.lengths})
    header = "| eval length | x L | " + " | ".join(f"`{res.model_name}`" for res in results) + " |"
    lines = [header, "|" + "---:|" * (len(results) + 2)]
    for length in lengths:
        cells = []
        for res in results:
            ppl = res.ppl.get(length)
            cells.append("-" if ppl is None else f"**{ppl:.2f}**" if length == training_length else f"{ppl:.2f}")
        multiple = length / training_length
        lines.append(f"| {length} | {multiple:g} | " + " | ".join(cells) + " |")
    longest = lengths[-1]
    ratios = [
        f"{res.ppl[longest] / res.ppl[training_length]:.2f}x"
        if longest in res.ppl and training_length in res.ppl
        else "-"
        for res in results
    ]
    lines.append(f"| ppl({longest}) / ppl({training_length}) | | " + " | ".join(ratios) + " |")
    return "\n".join(lines)


def _device() -> str:
    return machine.describe(machine.default_device())


def results_header(result: DemoResult, title: str) -> list[str]:
    """The opening of a results page: the title, the command that made it, the software, machine and run time."""
    return [
        f"# {title}",
        "",
        "Made by:",
        "",
        "```bash",
        result.settings.command(),
        "```",
        "",
        f"alibi-lm {__version__}, torch {torch.__version__}, {_device()}; the whole run took "
        f"{result.seconds / 60:.1f} min.",
        "",
    ]
