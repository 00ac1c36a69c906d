"""A huge single-line training file trains within a memory bound (issue 26, point 4).

`tokenizers` keeps an alignment pair per byte of a string it pre-tokenizes: a 20 MB single-line file used to peak
at 5.2 GB training a BPE tokenizer (200 MB passed 16 GB within 70 s). Long texts now go to it in 1 MiB pieces.
"""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict

from alibi_lm import blocks
from alibi_lm.blocks import DOCUMENT_END, text_pieces, train_bpe_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def prose(words: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    vocabulary = [
        "the",
        "model",
        "reads",
        "far",
        "past",
        "its",
        "training",
        "length",
        "and",
        "bias",
        "slopes",
        "ALiBi",
    ]
    return " ".join(rng.choice(vocabulary) + rng.choice(["", ",", "."]) for _ in range(words))


def test_pieces_rejoin_to_the_text_and_stay_under_the_size():
    text = prose(5000) + "x" * 3000  # ends with a run no space can cut
    pieces = list(text_pieces(text, size=1000))
    assert "".join(pieces) == text
    assert all(len(piece) <= 1000 for piece in pieces)
    assert all(piece.startswith(" ") for piece in pieces[1:-3])  # cut just before a space


def test_a_long_document_in_pieces_tokenizes_to_the_same_stream_with_one_eos(monkeypatch):
    texts = [prose(300, seed=i) for i in range(30)]
    tokenizer = train_bpe_tokenizer(Dataset.from_dict({"text": texts}), vocab_size=300)
    long = prose(20000, seed=99)
    (whole,) = blocks._tokenize_documents({"text": [long]}, tokenizer, "text")["input_ids"]
    monkeypatch.setattr(blocks, "TEXT_PIECE_CHARS", 997)
    pieces = blocks.split_long_documents(Dataset.from_dict({"text": [long, "short"]}), "text", "test-pieces", None)
    assert len(pieces) > 100 and pieces[DOCUMENT_END].count(True) == 2
    rows = blocks._tokenize_documents(pieces[:], tokenizer, "text")["input_ids"]
    stream = [token for row in rows for token in row]
    assert stream[: len(whole)] == whole  # the long document, eos once at its end; then "short" and its eos
    assert stream.count(tokenizer.eos_token_id) == 2
    assert (
        blocks.split_long_documents(Dataset.from_dict({"text": ["a", "short", "one"]}), "text", "unused", None) is None
    )


def test_tokenize_and_group_takes_the_pieces_path_for_a_long_document(monkeypatch):
    texts = [prose(300, seed=i) for i in range(30)]
    tokenizer = train_bpe_tokenizer(Dataset.from_dict({"text": texts}), vocab_size=300)
    raw = DatasetDict({"train": Dataset.from_dict({"text": [prose(20000, seed=7)]})})
    plain = blocks.tokenize_and_group(raw, tokenizer, block_size=64)["train"]
    monkeypatch.setattr(blocks, "TEXT_PIECE_CHARS", 997)
    cut = blocks.tokenize_and_group(raw, tokenizer, block_size=64)["train"]
    # The same token stream in blocks; map batches of 8 pieces drop a tail of < 64 tokens each.
    assert abs(len(cut) - len(plain)) <= len(cut) // 8 + 1
    assert cut[0]["input_ids"] == plain[0]["input_ids"]


PROBE = textwrap.dedent(
    """
    import resource, sys
    from datasets import Dataset, DatasetDict
    from alibi_lm.blocks import train_bpe_tokenizer
    imported = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    text = open(sys.argv[1]).read()
    train_bpe_tokenizer(Dataset.from_dict({"text": [text]}), vocab_size=512)
    print(imported, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
    """
)


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux")
def test_a_20_mb_single_line_trains_a_tokenizer_in_bounded_memory(tmp_path: Path):
    line = tmp_path / "one-line.txt"
    chunk = prose(200_000)
    with open(line, "w") as f:
        while f.tell() < 20 * 2**20:
            f.write(chunk + " ")
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(line)], capture_output=True, text=True, timeout=600, cwd=ROOT, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    imported_mib, peak_mib = map(int, result.stdout.split()[-2:])
    print(f"\npeak RSS training a BPE on a 20 MB single line: {peak_mib} MiB, {imported_mib} MiB of it imports")
    # What training adds over the imports (which weigh 540 MiB with torch's CPU build, 835 MiB with a CUDA build).
    assert peak_mib - imported_mib < 512  # 5.2 GB before
