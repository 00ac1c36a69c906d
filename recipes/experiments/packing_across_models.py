"""Do transformers' ALiBi models keep padding-free packed documents apart, as our model does?

    python recipes/experiments/packing_across_models.py --out recipes/results/packing-across-models.md

DataCollatorWithFlattening and TRL's padding-free packing send one row of documents, `position_ids` restarting at
each, and no attention_mask. For each model (small random weights, eval mode, its default attention): change every
token of the first document and see how far the second document's logits move. Kept apart, they do not move at all.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import transformers
from transformers import BloomConfig, BloomForCausalLM, FalconConfig, FalconForCausalLM, MptConfig, MptForCausalLM

from alibi_lm import AlibiConfig, AlibiForCausalLM

VOCAB, FIRST, SECOND = 99, 8, 12


def models() -> dict[str, torch.nn.Module]:
    """The ALiBi models of transformers and ours at one small size (hidden 32, 2 layers, 4 heads)."""
    torch.manual_seed(0)
    return {
        "BLOOM": BloomForCausalLM(BloomConfig(vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=4)),
        "MPT": MptForCausalLM(MptConfig(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, max_seq_len=64)),
        "Falcon (alibi=True)": FalconForCausalLM(
            FalconConfig(
                vocab_size=VOCAB,
                hidden_size=32,
                num_hidden_layers=2,
                num_attention_heads=4,
                alibi=True,
                new_decoder_architecture=False,
                multi_query=False,
            )  # fmt: skip
        ),
        "alibi-lm": AlibiForCausalLM(
            AlibiConfig(
                vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
            )
        ),
    }


def leak(model: torch.nn.Module) -> tuple[float, float]:
    """How far the second document's logits move when the first document's tokens change, and their largest size."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCAB, (1, FIRST + SECOND), generator=generator)
    other = ids.clone()
    other[:, :FIRST] = (ids[:, :FIRST] + 1) % VOCAB  # every token of the first document changed
    position_ids = torch.cat([torch.arange(FIRST), torch.arange(SECOND)])[None]
    with torch.no_grad():
        packed, changed = (model.eval()(row, position_ids=position_ids).logits[0, FIRST:] for row in (ids, other))
    return float((packed - changed).abs().max()), float(packed.abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="markdown table to write")
    args = parser.parse_args()
    rows = []
    for name, model in models().items():
        moved, size = leak(model)
        verdict = "kept apart" if moved == 0.0 else "attends across documents"
        rows.append(f"| {name} | {type(model).__name__} | {moved:.2e} | {size:.2f} | {verdict} |")
    lines = [
        "# Padding-free packed documents: does the second document see the first?",
        "",
        f"`python recipes/experiments/packing_across_models.py --out {args.out}`; torch {torch.__version__}, "
        f"transformers {transformers.__version__}; {time.strftime('%Y-%m-%d')}. One row of a {FIRST}-token and a "
        f"{SECOND}-token document, `position_ids` restarting at the second (DataCollatorWithFlattening's format), no "
        "attention_mask; random weights, hidden 32, 2 layers, 4 heads.",
        "",
        "| model | class | second document's logits moved by | their largest size | |",
        "|---|---|---|---|---|",
        *rows,
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
