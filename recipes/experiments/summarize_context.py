"""Tables of recipes/experiments/context_analysis.sh: non-overlapping against sliding, and the loss by position.

    python recipes/experiments/summarize_context.py recipes/results/context recipes/results/context-analysis.md

Reads the JSON files that `alibi-lm eval` wrote and writes one Markdown page; every number in it comes from them.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from alibi_lm.probe import position_buckets


def _by_model(path: Path) -> dict[str, dict[int, float]]:
    return {
        Path(r["model_name"]).name: {x["length"]: x["ppl"] for x in r["lengths"]} for r in json.loads(path.read_text())
    }


def main(folder: str, page: str) -> None:
    out = Path(folder)
    flat, slid = _by_model(out / "nonoverlapping.json"), _by_model(out / "sliding32.json")
    meta = json.loads((out / "sliding32.json").read_text())[0]
    models = list(flat)
    train = meta["training_length"]
    lengths = sorted(flat[models[0]])
    lines = [
        "# How much context do the demo's models use? Non-overlapping against sliding, and the loss by position",
        "",
        "Made by (after `alibi-lm demo --compare --block-size 64 --vocab-size 2048 --steps 10000 --multiples 1 2 4 8 16 32 64 --output-dir runs/demo-compare`, the comparison of 2026-11-28):",
        "",
        "```bash",
        "bash recipes/experiments/context_analysis.sh",
        "```",
        "",
        f"The five models of the demo comparison (L = {train}; `recipes/results/demo-compare-L64.md`). Perplexity on the "
        f"first {meta['span_tokens']:,} held-out tokens, both modes on the same tokens. Each cell: non-overlapping "
        f"/ sliding window with stride {meta['stride']} (every scored token has a full window of context).",
        "",
        "| eval length | x L | " + " | ".join(f"`{m}`" for m in models) + " |",
        "|---:|---:|" + "---:|" * len(models),
    ]
    for length in lengths:
        cells = [f"{flat[m][length]:.2f} / {slid[m][length]:.2f}" for m in models]
        lines.append(f"| {length} | {length // train} | " + " | ".join(cells) + " |")
    longest = lengths[-1]
    lines += ["", "What the two modes say, per model:", ""]
    for m in models:
        a0, a1, s0, s1 = flat[m][train], flat[m][longest], slid[m][train], slid[m][longest]
        best = min(slid[m], key=slid[m].get)
        lines.append(
            f"- `{m}`: non-overlapping {a0:.2f} at L -> {a1:.2f} at {longest // train}x L ({(a1 / a0 - 1) * 100:+.1f}%); "
            f"sliding {s0:.2f} -> {s1:.2f} ({(s1 / s0 - 1) * 100:+.1f}%), lowest at {best} tokens ({slid[m][best]:.2f})."
        )
    rows = json.loads((out / "by-position.json").read_text())["by_position"]
    length = rows[0]["length"]
    lines += [
        "",
        f"Loss (nats) by context size inside non-overlapping chunks of {length} tokens, the whole held-out split "
        f"(`alibi-lm eval --by-position`; the mean over all positions is the non-overlapping loss at {length}):",
        "",
        "| context (tokens) | " + " | ".join(f"`{Path(r['model']).name}`" for r in rows) + " |",
        "|---|" + "---:|" * len(rows),
    ]
    for first, last in position_buckets(length, train):
        cells = [sum(r["loss"][first - 1 : last]) / (last - first + 1) for r in rows]
        lines.append(f"| {first}-{last} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    means = [sum(r["loss"]) / len(r["loss"]) for r in rows]
    lines.append("| all | " + " | ".join(f"{x:.3f}" for x in means) + " |")
    lines.append("| perplexity | " + " | ".join(f"{math.exp(x):.2f}" for x in means) + " |")
    lines += [
        "",
        "![sliding-window perplexity against length](context/sliding32.png)",
        "",
        "![loss by position](context/by-position.png)",
        "",
    ]
    Path(page).write_text("\n".join(lines))
    print(f"wrote {page}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
