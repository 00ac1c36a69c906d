"""`transformers serve` runs an exported model: no remote code, an OpenAI-style request, our greedy tokens.

`transformers serve` looks a model's architecture up in transformers itself, so it cannot serve an alibi-lm folder
(remote code); `alibi-lm export --to mpt` makes one it can. The server runs as its own process, as users start it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from alibi_lm.cli import main as cli_main
from alibi_lm.model_files import prepare_for_hub
from tests.serving import check_server, transformers_serve
from tests.test_export import VOCAB, L, ours, trained
from tests.tiny import word_tokenizer

pytest.importorskip("fastapi", reason="transformers serve needs transformers[serving] (in the dev extra)")
pytest.importorskip("uvicorn", reason="transformers serve needs transformers[serving] (in the dev extra)")

PROMPT = " ".join(f"w{i}" for i in range(1, L // 2 + 1))
NEW_TOKENS = 2 * L  # the reply runs well past the training length


def test_exported_mpt_folder_is_served_by_transformers_serve(tmp_path: Path) -> None:
    model = trained("mpt")
    tokenizer = word_tokenizer(VOCAB)
    prepare_for_hub(model).save_pretrained(tmp_path / "alibi")
    tokenizer.save_pretrained(tmp_path / "alibi")
    assert cli_main(["export", str(tmp_path / "alibi"), str(tmp_path / "mpt"), "--to", "mpt"]) == 0
    # A second model, with random weights: the check must tell it apart.
    other = ours("mpt", seed=5)
    prepare_for_hub(other).save_pretrained(tmp_path / "other")
    tokenizer.save_pretrained(tmp_path / "other")

    with transformers_serve(tmp_path / "mpt", tmp_path / "serve.log") as endpoint:
        same = check_server(endpoint, tmp_path / "mpt", tmp_path / "alibi", PROMPT, NEW_TOKENS)
        different = check_server(endpoint, tmp_path / "mpt", tmp_path / "other", PROMPT, NEW_TOKENS)
    assert same.returncode == 0, same.stdout + same.stderr[-2000:]
    assert f"{L // 2 + NEW_TOKENS} tokens in all" in same.stdout  # prompt + reply, past the training length L
    assert different.returncode == 1 and "DIFFERENT from character" in different.stdout
