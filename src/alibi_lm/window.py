"""Windowed ALiBi: what a bias cutoff drops, measured against dense ALiBi on held-out text.

    alibi-lm window MODEL [--cutoffs 12 20 40] [--multiples 1 16 64] [--data wikipedia|FILE|DATASET] [--json FILE] [--markdown FILE]

With `alibi_window_cutoff = T` head h ignores keys more than `floor(T / m_h)` tokens back, whose bias is below
`-T`; the kernels then skip them (see `AlibiConfig`). Whether T is safe depends on the model's scores, so this
command measures, for each cutoff, on the same held-out tokens:

- the largest attention mass the window drops: dense eager attention probabilities summed past each head's window,
  the maximum over layers, heads and queries, at 16 x the training length;
- the largest logit difference from exact dense ALiBi at each multiple of the training length;
- the perplexity at 16 x L, exact dense and windowed, and their relative difference;
- whether cached greedy generation to 8 x L gives the same tokens.

The windowed rows run the blocked sdpa kernel at every length (a windowed model runs dense ALiBi on the fast path
where the windows hold most of the sequence, since that is faster; see `WINDOWED_WORK_LIMIT`), so they show what
the window drops; decoding steps carry the window in their mask. The reference is exact dense
ALiBi: the same kernel with windows longer than any sequence, so its bias comes from exact fp32 distances. The first
row is dense ALiBi on the model's default kernel (sdpa's key-only bias `m * pos_k` on the CPU), whose own fp32
rounding at long lengths puts the windowed rows' logit differences in scale.

It ends with one recommendation: of the cutoffs whose dropped attention mass is at most `--max-dropped-mass` (1e-3)
and whose perplexity at 16 x L moves by at most `--max-ppl-change` (0.1%, either way), the one with the least
attention work (`alibi_blocked.windowed_work_ratio` at the longest length: the blocked kernel's scores over dense
causal attention's), with the line that sets it: `from_pretrained(DIR, alibi_window_cutoff=T)`. None within the
tolerances: keep dense ALiBi.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .modeling.alibi_blocked import blocked_windows_everywhere, windowed_work_ratio
from .modeling.alibi_masks import alibi_windows, get_alibi_slopes
from .progress import progress_bar
from .scoring import add_data_arguments, data_text_prefix, load_model_and_tokenizer, tokenize_texts

DEFAULT_CUTOFFS = (12.0, 20.0, 40.0)
# What a recommended cutoff may change: a thousandth of any query's attention, a thousandth of the perplexity.
MAX_DROPPED_MASS = 1e-3
MAX_PPL_CHANGE = 1e-3
DEFAULT_MULTIPLES = (1, 16, 64)
EXACT_DENSE = 1e12  # a cutoff whose windows outreach any sequence: dense ALiBi through the windowed kernel


@dataclass
class CutoffReport:
    """What one cutoff T changes against dense ALiBi."""

    cutoff: float | None  # None: dense ALiBi on the model's default kernel
    windows: list[int]  # per head, in tokens (empty for dense)
    max_dropped_mass: float  # largest attention mass past a window (dense eager attention, up to 4 chunks)
    max_logit_diff: dict[int, float]  # evaluation length -> largest |logit difference|
    ppl_dense: float
    ppl_windowed: float
    greedy_identical: bool
    greedy_first_difference: int | None = None  # index of the first differing generated token
    work_ratio: float = 1.0  # attention scores computed over dense causal attention's, at the longest length

    @property
    def ppl_relative_diff(self) -> float:
        return (self.ppl_windowed - self.ppl_dense) / self.ppl_dense


@dataclass
class WindowReport:
    model: str
    training_length: int
    slopes: list[float]
    eval_tokens: int
    ppl_length: int
    generate_tokens: int
    cutoffs: list[CutoffReport] = field(default_factory=list)
    work_length: int = 0  # the length `work_ratio` is computed at

    def recommend(
        self, max_dropped_mass: float = MAX_DROPPED_MASS, max_ppl_change: float = MAX_PPL_CHANGE
    ) -> CutoffReport | None:
        """The cutoff with the least attention work whose dropped mass and perplexity change are within tolerance."""
        safe = [
            c
            for c in self.cutoffs
            if c.cutoff is not None
            and c.max_dropped_mass <= max_dropped_mass
            and abs(c.ppl_relative_diff) <= max_ppl_change
            and c.work_ratio < 1.0  # windows that hold the whole sequence save nothing
        ]
        return min(safe, key=lambda c: (c.work_ratio, c.cutoff), default=None)

    def advice(
        self, model_path: str, max_dropped_mass: float = MAX_DROPPED_MASS, max_ppl_change: float = MAX_PPL_CHANGE
    ) -> str:
        """The recommendation as lines a user can act on, with the tolerances it was chosen under."""
        chosen = self.recommend(max_dropped_mass, max_ppl_change)
        tolerances = f"dropped attention mass <= {max_dropped_mass:g}, perplexity change <= {max_ppl_change:.2%}"
        if chosen is None:
            saving = [f"{c.cutoff:g}" for c in self.cutoffs if c.cutoff is not None and c.work_ratio < 1.0]
            why = (
                f"the cutoffs that would ({', '.join(saving)}) go past the tolerances"
                if saving
                else f"no cutoff's windows are short enough to save work at {self.work_length:,} tokens (measure at "
                "longer lengths with --multiples, or smaller cutoffs)"
            )
            return (
                f"Recommended: keep dense ALiBi (alibi_window_cutoff=None): no cutoff measured here both saves "
                f"attention work at {self.work_length:,} tokens and stays within {tolerances}; {why}.\n"
            )
        return (
            f"Recommended: alibi_window_cutoff={chosen.cutoff:g}, the least attention work within {tolerances}: "
            f"{chosen.work_ratio:.0%} of dense attention's scores at {self.work_length:,} tokens "
            f"(up to {1 / chosen.work_ratio:.1f}x less attention work), dropped mass {chosen.max_dropped_mass:.1e}, "
            f"perplexity {chosen.ppl_relative_diff:+.3%}, greedy tokens "
            f"{'identical' if chosen.greedy_identical else 'differ'} to {self.generate_tokens}.\n"
            f"Set it: AutoModelForCausalLM.from_pretrained({model_path!r}, alibi_window_cutoff={chosen.cutoff:g})"
            f'  (or "alibi_window_cutoff": {chosen.cutoff:g} in config.json)\n'
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for row, cutoff in zip(data["cutoffs"], self.cutoffs):
            row["ppl_relative_diff"] = cutoff.ppl_relative_diff
        chosen = self.recommend()
        data["recommended_cutoff"] = chosen.cutoff if chosen is not None else None
        return data

    def to_markdown(self) -> str:
        lengths = sorted(self.cutoffs[0].max_logit_diff) if self.cutoffs else []
        head = ["cutoff T", "windows (tokens, per head)", "max dropped mass"]
        head += [f"max logit diff @ {n}" for n in lengths]
        head += [f"ppl @ {self.ppl_length}: exact dense", "this row", "relative", f"greedy to {self.generate_tokens}"]
        head += [f"attention work @ {self.work_length}"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
        for c in self.cutoffs:
            greedy = "identical" if c.greedy_identical else f"differs at token {c.greedy_first_difference}"
            if c.cutoff is None:
                row = ["none (dense, default kernel)", "all", "0"]
            else:
                row = [f"{c.cutoff:g}", ", ".join(map(str, c.windows)), f"{c.max_dropped_mass:.1e}"]
            row += [f"{c.max_logit_diff[n]:.1e}" for n in lengths]
            row += [f"{c.ppl_dense:.4f}", f"{c.ppl_windowed:.4f}", f"{c.ppl_relative_diff:+.4%}", greedy]
            row += [f"{c.work_ratio:.0%}"]
            lines.append("| " + " | ".join(row) + " |")
        return "\n".join(lines) + "\n"


def _windowed(model: torch.nn.Module, cutoff: float | None) -> None:
    model.config.alibi_window_cutoff = cutoff  # read at every forward


def dropped_attention_mass(model: torch.nn.Module, chunk: torch.Tensor, windows: torch.Tensor) -> float:
    """Largest softmax mass past each head's window over layers, heads and queries of dense `[1, n]` attention."""
    implementation = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            attentions = model(chunk, output_attentions=True).attentions  # layers x [1, H, n, n]
    finally:
        model.set_attn_implementation(implementation)
    n = chunk.shape[1]
    distance = torch.arange(n)[:, None] - torch.arange(n)[None, :]  # [n, n]
    beyond = distance[None] > windows.cpu()[:, None, None]  # [H, n, n]
    return max(float((attention[0].float().cpu() * beyond).sum(-1).max()) for attention in attentions)


def _nll(model: torch.nn.Module, chunks: torch.Tensor) -> tuple[torch.Tensor, float, int]:
    """Logits of `chunks` [C, n] (one forward per chunk) and their summed next-token NLL and token count."""
    logits, total, count = [], 0.0, 0
    with torch.no_grad():
        for chunk in chunks:
            out = model(chunk[None]).logits.float()
            logits.append(out)
            total += float(torch.nn.functional.cross_entropy(out[0, :-1], chunk[1:], reduction="sum"))
            count += chunk.numel() - 1
    return torch.cat(logits), total, count


def _greedy(model: torch.nn.Module, prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(
            prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0
        )[0, prompt.shape[1] :]


PPL_MULTIPLE = 16  # perplexity, dense and windowed, is compared at this multiple of the training length


def tokens_needed(training_length: int, multiples: Sequence[int], max_eval_tokens: int) -> int:
    """How many tokens of text `measure_cutoffs` reads: the longest length, or `max_eval_tokens` per length."""
    return max(max_eval_tokens, training_length * max([*multiples, PPL_MULTIPLE]))


def measure_cutoffs(
    model: torch.nn.Module,
    token_ids: torch.Tensor,
    cutoffs: Sequence[float] = DEFAULT_CUTOFFS,
    multiples: Sequence[int] = DEFAULT_MULTIPLES,
    ppl_multiple: int = PPL_MULTIPLE,
    generate_multiple: int = 8,
    max_eval_tokens: int = 16_384,
    model_name: str = "model",
    progress: bool = True,
) -> WindowReport:
    """Measure each cutoff against dense ALiBi on `token_ids` [N] (see the module docstring)."""
    config = model.config
    if getattr(config, "position_encoding", None) != "alibi":
        raise ValueError(f"{model_name}: windowed ALiBi needs an ALiBi model, got position_encoding="
                         f"{getattr(config, 'position_encoding', None)!r}.")  # fmt: skip
    if not cutoffs or any(not (isinstance(t, (int, float)) and math.isfinite(t) and t > 0) for t in cutoffs):
        raise ValueError(f"cutoffs must be positive numbers, got {cutoffs}.")
    training_length = config.train_length
    lengths = sorted({training_length * m for m in [*multiples, ppl_multiple]})
    if token_ids.numel() < max(lengths):
        raise ValueError(
            f"the text has {token_ids.numel()} tokens, fewer than the longest evaluation length {max(lengths)}."
        )
    model.eval()
    slopes = get_alibi_slopes(config.num_attention_heads, config.alibi_max_bias)
    ppl_length = training_length * ppl_multiple

    def chunks_of(n: int) -> torch.Tensor:
        count = max(1, min(token_ids.numel(), max_eval_tokens) // n)
        return token_ids[: count * n].view(count, n)

    # The reference: dense ALiBi through the windowed kernel with windows longer than any sequence, so that the
    # bias comes from exact fp32 distances; the default dense kernel (sdpa's key-only bias on the CPU) has its own
    # fp32 rounding at long lengths, shown as the first row.
    _windowed(model, EXACT_DENSE)
    prompt = token_ids[None, : max(1, training_length // 2)]
    new_tokens = generate_multiple * training_length - prompt.shape[1]
    with blocked_windows_everywhere():
        exact = {n: _nll(model, chunks_of(n)) for n in progress_bar(lengths, desc="dense ALiBi", disable=not progress)}
        exact_tokens = _greedy(model, prompt, new_tokens)
    _, exact_total, exact_count = exact[ppl_length]

    report = WindowReport(
        model_name, training_length, slopes.tolist(), min(token_ids.numel(), max_eval_tokens), ppl_length,
        generate_multiple * training_length, work_length=max(lengths),
    )  # fmt: skip
    try:
        for cutoff in progress_bar([None, *cutoffs], desc="cutoffs", disable=not progress):
            windows, mass = [], 0.0
            if cutoff is not None:
                windows = alibi_windows(slopes, cutoff)
                chunks = chunks_of(ppl_length)[:4]
                _windowed(model, None)  # the mass that dense attention puts past the windows
                mass = max(dropped_attention_mass(model, chunk[None], windows) for chunk in chunks)
                windows = windows.tolist()
            _windowed(model, cutoff)
            diffs, ppl = {}, math.nan
            with blocked_windows_everywhere():
                for n in lengths:
                    logits, total, count = _nll(model, chunks_of(n))
                    if n in (training_length * m for m in multiples):
                        diffs[n] = float((logits - exact[n][0]).abs().max())
                    if n == ppl_length:
                        ppl = math.exp(total / count)
                differs = (_greedy(model, prompt, new_tokens) != exact_tokens).nonzero()
            report.cutoffs.append(
                CutoffReport(
                    cutoff=None if cutoff is None else float(cutoff),
                    windows=windows,
                    max_dropped_mass=mass,
                    max_logit_diff=diffs,
                    ppl_dense=math.exp(exact_total / exact_count),
                    ppl_windowed=ppl,
                    greedy_identical=differs.numel() == 0,
                    greedy_first_difference=int(differs[0]) if differs.numel() else None,
                    work_ratio=windowed_work_ratio(windows, max(lengths)) if windows else 1.0,
                )
            )
    finally:
        _windowed(model, None)
    return report


def run(args: argparse.Namespace) -> int:
    if not (args.max_dropped_mass >= 0 and args.max_ppl_change >= 0):
        raise ValueError(
            f"--max-dropped-mass and --max-ppl-change are tolerances, at least 0; got {args.max_dropped_mass:g} and "
            f"{args.max_ppl_change:g}."
        )
    if not Path(args.model).is_dir():
        raise FileNotFoundError(f"model folder not found: {args.model}")
    model, tokenizer = load_model_and_tokenizer(args.model, args.device)
    # Read as far as the measurement needs: the default split is small, a Hub corpus's may be terabytes.
    needed = tokens_needed(model.config.train_length, args.multiples, args.max_eval_tokens)
    texts = data_text_prefix(args).up_to(tokenizer, needed)
    report = measure_cutoffs(
        model,
        tokenize_texts(texts, tokenizer),
        cutoffs=args.cutoffs,
        multiples=args.multiples,
        max_eval_tokens=args.max_eval_tokens,
        model_name=args.model,
        progress=not args.no_progress,
    )
    markdown = report.to_markdown() + "\n" + report.advice(args.model, args.max_dropped_mass, args.max_ppl_change)
    print(markdown, end="")
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(markdown)
    return 0


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "window",
        help="measure what windowed ALiBi (alibi_window_cutoff) changes against dense ALiBi",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("model", metavar="MODEL", help="an ALiBi model folder written by save_pretrained")
    parser.add_argument("--cutoffs", type=float, nargs="+", default=list(DEFAULT_CUTOFFS), help="values of T")
    parser.add_argument(
        "--multiples", type=int, nargs="+", default=list(DEFAULT_MULTIPLES), help="x training length for logits"
    )
    add_data_arguments(parser)
    parser.add_argument("--max-eval-tokens", type=int, default=16_384, help="held-out tokens per length")
    parser.add_argument(
        "--max-dropped-mass", type=float, default=MAX_DROPPED_MASS, help="tolerance of the recommendation"
    )
    parser.add_argument(
        "--max-ppl-change", type=float, default=MAX_PPL_CHANGE, help="relative perplexity change it tolerates"
    )
    parser.add_argument("--device", help="default: cpu")
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument("--markdown", metavar="FILE")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(func=run)


__all__ = ["CutoffReport", "WindowReport", "dropped_attention_mass", "measure_cutoffs"]
