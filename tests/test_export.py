"""`alibi-lm export --to mpt|bloom`: transformers' own MPT and BLOOM compute what our model computes.

MptForCausalLM and BloomForCausalLM are ALiBi implementations nobody here wrote; an exported model must give the same
logits (1e-4, fp32), the same left-padded batch and the same greedy tokens past the training length, with a cache.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, BloomForCausalLM, MptForCausalLM

from alibi_lm import AlibiConfig, AlibiForCausalLM
from alibi_lm.export import export_checkpoint, export_model, export_problems
from alibi_lm.model_files import prepare_for_hub
from tests.tiny import cli_error, perturb, random_ids, word_tokenizer

VOCAB, L = 99, 16  # L: the training length the configs record
ATOL = 1e-4
SUBSETS = {
    "mpt": dict(),  # the default AlibiConfig is MPT's architecture
    "bloom": dict(
        hidden_act="gelu_pytorch_tanh",
        embedding_layer_norm=True,
        attention_bias=True,
        mlp_bias=True,
        layer_norm_bias=True,
    ),
}
BIASES = dict(attention_bias=True, mlp_bias=True, layer_norm_bias=True)
EXPORTED = {"mpt": MptForCausalLM, "bloom": BloomForCausalLM}


def ours(target: str, heads: int = 4, seed: int = 0, **overrides) -> AlibiForCausalLM:
    """A tiny model inside `target`'s subset, every parameter randomised (biases and norms included)."""
    torch.manual_seed(seed)
    config = AlibiConfig(
        vocab_size=VOCAB,
        hidden_size=8 * heads,
        num_hidden_layers=2,
        num_attention_heads=heads,
        train_length=L,
        **{**SUBSETS[target], **overrides},
    )
    return perturb(AlibiForCausalLM(config), seed)


def trained(target: str) -> AlibiForCausalLM:
    """A tiny model after 40 AdamW steps on a repeating pattern: weights shaped by training, not by init."""
    model = ours(target, seed=1).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    pattern = torch.arange(L).repeat(4, 2) % VOCAB  # [4, 2L]
    first = None
    for _ in range(40):
        loss = model(input_ids=pattern, labels=pattern).loss
        first = first if first is not None else loss.item()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert loss.item() < 0.5 * first  # it learned
    return model.eval()


@pytest.mark.parametrize("target", ["mpt", "bloom"])
@pytest.mark.parametrize("heads", [4, 6])
def test_logits_match_past_the_training_length(target, heads):
    model = ours(target, heads)
    exported = export_model(model, target)
    assert type(exported) is EXPORTED[target]
    ids = random_ids(2, 3 * L, VOCAB)
    with torch.no_grad():
        torch.testing.assert_close(exported(ids).logits, model(ids).logits, rtol=0, atol=ATOL)


@pytest.mark.parametrize("target", ["mpt", "bloom"])
def test_trained_model_logits_match(target):
    model = trained(target)
    exported = export_model(model, target)
    ids = random_ids(2, 2 * L, VOCAB, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(exported(ids).logits, model(ids).logits, rtol=0, atol=ATOL)


@pytest.mark.parametrize("target", ["mpt", "bloom"])
def test_left_padded_batch_matches(target):
    model = ours(target)
    exported = export_model(model, target)
    ids = random_ids(2, 2 * L, VOCAB, seed=1)
    mask = torch.ones_like(ids)
    mask[1, :7] = 0  # the second row is left-padded by 7
    with torch.no_grad():
        expected, got = model(ids, attention_mask=mask).logits, exported(ids, attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(got[real], expected[real], rtol=0, atol=ATOL)


@pytest.mark.parametrize("target", ["mpt", "bloom"])
def test_greedy_cached_generation_is_identical_past_the_training_length(target):
    model = trained(target)
    exported = export_model(model, target)
    prompt = random_ids(1, L // 2, VOCAB, seed=2)
    options = dict(max_new_tokens=3 * L, min_new_tokens=3 * L, do_sample=False, use_cache=True, pad_token_id=0)
    with torch.no_grad():
        expected, got = model.generate(prompt, **options), exported.generate(prompt, **options)
    assert got.shape[1] == L // 2 + 3 * L > L
    assert torch.equal(got, expected)


def test_refusal_lists_every_field_that_does_not_fit():
    config = AlibiConfig(
        num_key_value_heads=4,
        position_encoding="rotary",
        hidden_act="silu",
        intermediate_size=100,
        tie_word_embeddings=False,
        alibi_max_bias=4.0,
    )
    problems = export_problems(config, "bloom")
    fields = [problem.split("=")[0] for problem in problems]
    assert fields == [
        "position_encoding",
        "alibi_max_bias",
        "num_key_value_heads",
        "hidden_act",
        "attention_bias",
        "mlp_bias",
        "layer_norm_bias",
        "embedding_layer_norm",
        "intermediate_size",
        "tie_word_embeddings",
    ]
    # Windowed ALiBi drops far keys; MPT and BLOOM see all of them.
    assert [p.split("=")[0] for p in export_problems(AlibiConfig(alibi_window_cutoff=20), "mpt")] == [
        "alibi_window_cutoff"
    ]
    # The default config is MPT's architecture (exportable as it is); BLOOM wants the tanh GELU, biases everywhere and
    # the embedding LayerNorm.
    assert export_problems(AlibiConfig(), "mpt") == []
    assert [p.split("=")[0] for p in export_problems(AlibiConfig(), "bloom")] == [
        "hidden_act",
        "attention_bias",
        "mlp_bias",
        "layer_norm_bias",
        "embedding_layer_norm",
    ]
    with_biases = AlibiForCausalLM(
        AlibiConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, **BIASES)
    )
    with pytest.raises(ValueError, match=r"cannot be exported as MPT; 3 field\(s\) do not fit: attention_bias=True"):
        export_model(with_biases, "mpt")


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """One trained alibi-lm folder per target, inside that target's subset, with a tokenizer."""
    root = tmp_path_factory.mktemp("export")
    for target in ("mpt", "bloom"):
        model = trained(target)
        prepare_for_hub(model).save_pretrained(root / target)
        word_tokenizer(VOCAB).save_pretrained(root / target)
    return root


@pytest.mark.parametrize("target", ["mpt", "bloom"])
def test_cli_writes_a_folder_transformers_loads_without_remote_code(saved, tmp_path, capsys, target):
    from alibi_lm.cli import main

    out = tmp_path / f"exported-{target}"
    assert main(["export", str(saved / target), str(out), "--to", target]) == 0
    assert f"as {EXPORTED[target].__name__}" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == target and "auto_map" not in config
    assert not list(out.glob("*.py"))  # nothing for trust_remote_code to run
    assert (out / "model.safetensors").stat().st_mode & 0o777 == (out / "config.json").stat().st_mode & 0o777
    assert AutoConfig.from_pretrained(out).model_type == target
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert type(loaded) is EXPORTED[target]
    if target == "mpt":
        assert loaded.config.max_seq_len == 16 * L  # ALiBi's reach, which engines read as the context limit
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer(" ".join(f"w{i % 90 + 1}" for i in range(2 * L)), return_tensors="pt")["input_ids"]
    original = AutoModelForCausalLM.from_pretrained(saved / target)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, original(ids).logits, rtol=0, atol=ATOL)


def test_cli_refuses_outside_the_subset_and_writes_nothing(tmp_path, capsys):
    folder = tmp_path / "with-biases"
    config = AlibiConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, **BIASES)
    AlibiForCausalLM(config).save_pretrained(folder)
    message = cli_error(["export", str(folder), str(tmp_path / "out"), "--to", "mpt"], capsys)
    assert "attention_bias=True" in message and "mlp_bias=True" in message and "layer_norm_bias=True" in message
    assert not (tmp_path / "out").exists()


def test_existing_destination_and_short_max_length_are_refused(saved, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert "already exists" in cli_error(["export", str(saved / "mpt"), str(out), "--to", "mpt"], capsys)
    assert (out / "keep.txt").read_text() == "mine"
    message = cli_error(
        ["export", str(saved / "mpt"), str(tmp_path / "short"), "--to", "mpt", "--max-length", str(L - 1)], capsys
    )
    assert f"below the training length {L}" in message
    exported = export_checkpoint(saved / "mpt", out, "mpt", max_length=4 * L, overwrite=True)
    assert exported.config.max_seq_len == 4 * L and not (out / "keep.txt").exists()
