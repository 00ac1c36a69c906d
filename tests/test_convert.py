"""BLOOM and MPT checkpoints convert to alibi-lm with the same logits and generations (`alibi-lm convert`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    BloomConfig,
    BloomForCausalLM,
    FalconConfig,
    LlamaConfig,
    MptConfig,
    MptForCausalLM,
)

from alibi_lm import AlibiConfig, AlibiForCausalLM
from alibi_lm.cli import main as cli_main
from alibi_lm.convert import (
    check_convertible,
    convert_bloom,
    convert_checkpoint,
    convert_model,
    convert_mpt,
    mpt_to_alibi_config,
)
from tests.tiny import AUTO_CLASSES, perturb, word_tokenizer

VOCAB, HIDDEN, MAX_SEQ_LEN = 99, 48, 16  # hidden 48 divides by 4, 6, 8 and 12 heads
ATOL = 1e-4


def bloom(heads: int = 12, seed: int = 0, **config) -> BloomForCausalLM:
    torch.manual_seed(seed)
    config = BloomConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, n_layer=2, n_head=heads, initializer_range=0.2, **config
    )
    return perturb(BloomForCausalLM(config), seed)


def mpt(heads: int = 12, seed: int = 0, **config) -> MptForCausalLM:
    torch.manual_seed(seed)
    config = MptConfig(
        vocab_size=VOCAB,
        d_model=HIDDEN,
        n_heads=heads,
        n_layers=2,
        max_seq_len=MAX_SEQ_LEN,
        initializer_range=0.2,
        **config,
    )
    return perturb(MptForCausalLM(config), seed)


SOURCES = {"bloom": (bloom, convert_bloom), "mpt": (mpt, convert_mpt)}


def ids(batch: int = 2, length: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def logits(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids, attention_mask=attention_mask).logits


# ---------------------------------------------------------------------------------------------------------------
# Parity
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("heads", [4, 6, 8, 12])
@pytest.mark.parametrize("arch", ["bloom", "mpt"])
def test_logits_match_reference(arch: str, heads: int) -> None:
    build, convert = SOURCES[arch]
    reference = build(heads)
    ours = convert(reference)
    x = ids(batch=2)
    expected = logits(reference, x)
    assert expected.std() > 0.5  # logits far from uniform, so a 1e-4 match means something
    for implementation in ("sdpa", "eager"):
        ours.set_attn_implementation(implementation)
        torch.testing.assert_close(logits(ours, x), expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("arch", ["bloom", "mpt"])
def test_left_padded_batch_matches_reference(arch: str) -> None:
    # Both references get left padding right (BLOOM from the mask's cumsum, MPT because its bias depends only on
    # i - j), so we compare every real token; padding slots are undefined in both and are skipped.
    build, convert = SOURCES[arch]
    reference = build()
    ours = convert(reference)
    x, pad = ids(batch=2), 5
    mask = torch.ones_like(x)
    mask[1, :pad] = 0
    real = mask.bool()
    unpadded = logits(reference, x[1:, pad:])[0]
    torch.testing.assert_close(logits(reference, x, mask)[1, pad:], unpadded, atol=ATOL, rtol=0)
    torch.testing.assert_close(logits(ours, x, mask)[real], logits(reference, x, mask)[real], atol=ATOL, rtol=0)


@pytest.mark.parametrize("arch", ["bloom", "mpt"])
def test_greedy_generation_identical(arch: str) -> None:
    build, convert = SOURCES[arch]
    # Tied random BLOOMs repeat their last token forever; an untied head gives varied continuations.
    reference = build(tie_word_embeddings=False) if arch == "bloom" else build()
    ours = convert(reference)
    prompts = ids(batch=3, length=6)
    mask = torch.ones_like(prompts)
    mask[1, :2], mask[2, :4] = 0, 0  # left-padded prompts of lengths 6, 4 and 2
    settings = {"attention_mask": mask, "max_new_tokens": MAX_SEQ_LEN - 6, "do_sample": False, "pad_token_id": 0}
    expected = reference.generate(prompts, **settings)
    assert len(set(expected[:, 6:].flatten().tolist())) > 6  # varied continuations, not one token repeated
    assert torch.equal(ours.generate(prompts, use_cache=True, **settings), expected)


def test_converted_mpt_generates_past_mpt_max_seq_len() -> None:
    reference = mpt()
    ours = convert_mpt(reference)
    assert (ours.config.train_length, ours.config.max_position_embeddings) == (MAX_SEQ_LEN, 16 * MAX_SEQ_LEN)
    prompt = ids(batch=1, length=8)
    settings = {"do_sample": False, "pad_token_id": 0}
    # MPT's bias table has max_seq_len columns: one token more and the forward breaks.
    with pytest.raises(RuntimeError, match="must match"):
        reference.generate(prompt, max_new_tokens=MAX_SEQ_LEN, **settings)

    generated = ours.generate(prompt, max_new_tokens=3 * MAX_SEQ_LEN, use_cache=True, **settings)
    assert generated.shape[1] == 8 + 3 * MAX_SEQ_LEN
    # Up to max_seq_len both agree; past it, the cached tokens are the argmax of an uncached forward.
    assert torch.equal(generated[:, :MAX_SEQ_LEN], reference.generate(prompt, max_new_tokens=8, **settings))
    assert torch.equal(logits(ours, generated[:, :-1]).argmax(-1)[:, 7:], generated[:, 8:])


# ---------------------------------------------------------------------------------------------------------------
# Config mapping
# ---------------------------------------------------------------------------------------------------------------


def test_bloom_config_mapping() -> None:
    reference = bloom(heads=4, seq_length=1024, pad_token_id=3)
    config = convert_bloom(reference).config
    assert config.hidden_act == "gelu_pytorch_tanh"
    assert config.embedding_layer_norm and config.attention_bias and config.mlp_bias and config.layer_norm_bias
    assert (config.intermediate_size, config.train_length) == (4 * HIDDEN, 1024)
    assert (config.pad_token_id, config.bos_token_id, config.eos_token_id) == (3, 1, 2)
    assert config.tie_word_embeddings and config.alibi_max_bias == 8.0
    assert convert_bloom(bloom(heads=4)).config.train_length == 2048  # BLOOM's training length


def test_mpt_config_mapping() -> None:
    config = convert_mpt(mpt(heads=4, eos_token_id=5)).config
    assert config.hidden_act == "gelu"
    assert not (config.embedding_layer_norm or config.attention_bias or config.mlp_bias or config.layer_norm_bias)
    assert (config.train_length, config.eos_token_id, config.vocab_size) == (MAX_SEQ_LEN, 5, VOCAB)
    config = MptConfig(d_model=HIDDEN, n_heads=4, n_layers=1, max_seq_len=64, attn_config={"alibi_bias_max": 4})
    assert mpt_to_alibi_config(config).alibi_max_bias == 4.0


def test_untied_lm_head_is_copied() -> None:
    reference = bloom(heads=4, tie_word_embeddings=False)
    assert reference.lm_head.weight is not reference.transformer.word_embeddings.weight
    ours = convert_bloom(reference)
    assert not ours.config.tie_word_embeddings
    assert ours.lm_head.weight is not ours.model.embed_tokens.weight
    torch.testing.assert_close(logits(ours, ids(1)), logits(reference, ids(1)), atol=ATOL, rtol=0)


def test_state_dict_input_matches_model_input() -> None:
    reference = mpt(heads=8)
    ours = convert_mpt(dict(reference.state_dict()), reference.config)
    torch.testing.assert_close(logits(ours, ids(1)), logits(reference, ids(1)), atol=ATOL, rtol=0)


# ---------------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------------


def test_unsupported_architecture_rejected() -> None:
    with pytest.raises(ValueError, match=r"Unsupported architecture 'llama'.*bloom, mpt"):
        check_convertible(LlamaConfig())
    with pytest.raises(ValueError, match="already in alibi-lm's format"):
        check_convertible(AlibiConfig())


def test_falcon_without_alibi_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="alibi=False: the model does not use ALiBi"):
        check_convertible(FalconConfig(alibi=False))
    # From a folder: the config alone is enough to refuse, before any weight is looked for.
    FalconConfig(alibi=False).save_pretrained(tmp_path / "falcon")
    with pytest.raises(ValueError, match="does not use ALiBi"):
        convert_checkpoint(tmp_path / "falcon", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_falcon_with_alibi_rejected_as_unsupported() -> None:
    with pytest.raises(ValueError, match="Unsupported architecture 'falcon'"):
        check_convertible(FalconConfig(alibi=True))


def test_bloom_post_layernorm_residual_rejected() -> None:
    with pytest.raises(ValueError, match="apply_residual_connection_post_layernorm"):
        convert_bloom(bloom(heads=4, apply_residual_connection_post_layernorm=True))


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("alibi", False, "does not use ALiBi"),
        ("clip_qkv", 6.0, "clip_qkv"),
        ("qk_ln", True, "qk_ln"),
        ("prefix_lm", True, "prefix_lm"),
        ("softmax_scale", 0.5, "softmax_scale"),
        ("attn_type", "multiquery_attention", "attn_type"),
    ],
)
def test_mpt_unreproducible_attention_options_rejected(option: str, value: object, message: str) -> None:
    config = MptConfig(vocab_size=VOCAB, d_model=HIDDEN, n_heads=4, n_layers=1, attn_config={option: value})
    with pytest.raises(ValueError, match=message):
        check_convertible(config)


def test_mpt_default_softmax_scale_accepted() -> None:
    config = MptConfig(d_model=HIDDEN, n_heads=4, n_layers=1, attn_config={"softmax_scale": (HIDDEN // 4) ** -0.5})
    assert check_convertible(config) == "mpt"


@pytest.mark.parametrize("option, value", [("logit_scale", 0.5), ("norm_type", "rmsnorm")])
def test_mpt_unreproducible_model_options_rejected(option: str, value: object) -> None:
    config = MptConfig(d_model=HIDDEN, n_heads=4, n_layers=1, **{option: value})
    with pytest.raises(ValueError, match=option):
        check_convertible(config)


def test_mpt_biases_lost_by_transformers_are_reported() -> None:
    reference = mpt(heads=4, no_bias=False)  # the original model had biases; transformers' MptMLP drops them
    with pytest.raises(ValueError, match="no_bias=False"):
        convert_mpt(reference)


def test_missing_and_unknown_weights_rejected() -> None:
    reference = bloom(heads=4)
    state_dict = dict(reference.state_dict())
    del state_dict["transformer.h.1.mlp.dense_4h_to_h.bias"]
    with pytest.raises(ValueError, match=r"no weight 'h\.1\.mlp\.dense_4h_to_h\.bias'"):
        convert_bloom(state_dict, reference.config)
    state_dict = {**reference.state_dict(), "transformer.h.0.self_attention.q_ln.weight": torch.ones(HIDDEN)}
    with pytest.raises(ValueError, match="does not know how to map.*q_ln"):
        convert_bloom(state_dict, reference.config)
    with pytest.raises(ValueError, match="needs its config"):
        convert_bloom(state_dict)


# ---------------------------------------------------------------------------------------------------------------
# Checkpoint folders and the CLI
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bloom_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, BloomForCausalLM]:
    folder = tmp_path_factory.mktemp("source") / "bloom"
    reference = bloom(heads=12)
    reference.save_pretrained(folder)
    word_tokenizer(VOCAB).save_pretrained(folder)
    return folder, reference


def test_cli_writes_hub_folder_that_loads_and_matches(bloom_folder, tmp_path: Path, capsys) -> None:
    src, reference = bloom_folder
    dst = tmp_path / "converted"
    assert cli_main(["convert", str(src), str(dst)]) == 0
    assert "12 heads" in capsys.readouterr().out
    for name in ("model.safetensors", "config.json", "modeling_alibi.py", "configuration_alibi.py", "tokenizer.json"):
        assert (dst / name).is_file(), name
    auto_map = json.loads((dst / "config.json").read_text())["auto_map"]
    assert set(auto_map) == AUTO_CLASSES
    assert sorted(p.name for p in tmp_path.iterdir()) == ["converted"]  # no staging folder left behind

    loaded = AutoModelForCausalLM.from_pretrained(dst)
    assert isinstance(loaded, AlibiForCausalLM)
    torch.testing.assert_close(logits(loaded.eval(), ids()), logits(reference, ids()), atol=ATOL, rtol=0)
    assert AutoTokenizer.from_pretrained(dst)("w5 w7")["input_ids"] == [5, 7]


def test_converted_folder_loads_with_transformers_alone(tmp_path: Path) -> None:
    # A fresh process that never imports alibi_lm: only the folder's remote code defines the model.
    reference = mpt(heads=12)
    reference.save_pretrained(tmp_path / "mpt")
    convert_checkpoint(tmp_path / "mpt", tmp_path / "converted")
    torch.save(ids(), tmp_path / "ids.pt")
    script = (
        "import sys, torch\n"
        "from transformers import AutoModelForCausalLM\n"
        "m = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True).eval()\n"
        "assert 'alibi_lm' not in sys.modules, 'the installed package was imported'\n"
        "with torch.no_grad():\n"
        "    torch.save(m(torch.load(sys.argv[2])).logits, sys.argv[3])\n"
    )
    subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            str(tmp_path / "converted"),
            str(tmp_path / "ids.pt"),
            str(tmp_path / "out.pt"),
        ],
        check=True,
        cwd=tmp_path,
    )
    torch.testing.assert_close(torch.load(tmp_path / "out.pt"), logits(reference, ids()), atol=ATOL, rtol=0)


def test_failed_write_leaves_nothing(bloom_folder, tmp_path: Path, monkeypatch) -> None:
    src, _ = bloom_folder
    original = AlibiForCausalLM.save_pretrained

    def save_then_fail(self, folder, *args, **kwargs):
        original(self, folder, *args, **kwargs)  # the weights are on disk when the error comes
        raise OSError("disk full")

    monkeypatch.setattr(AlibiForCausalLM, "save_pretrained", save_then_fail)
    with pytest.raises(OSError, match="disk full"):
        convert_checkpoint(src, tmp_path / "converted")
    assert list(tmp_path.iterdir()) == []


def test_existing_destination_needs_overwrite(bloom_folder, tmp_path: Path, capsys) -> None:
    src, _ = bloom_folder
    dst = tmp_path / "converted"
    dst.mkdir()
    (dst / "stale.txt").write_text("old")
    with pytest.raises(FileExistsError, match="--overwrite"):
        convert_checkpoint(src, dst)
    assert cli_main(["convert", str(src), str(dst)]) == 2
    assert "already exists" in capsys.readouterr().err
    convert_checkpoint(src, dst, overwrite=True)
    assert (dst / "model.safetensors").is_file() and not (dst / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["converted"]


def test_missing_source_rejected(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        convert_checkpoint(tmp_path / "nowhere", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        convert_checkpoint(tmp_path / "empty", tmp_path / "out")


def test_convert_model_dispatches_on_model_type() -> None:
    reference = mpt(heads=6)
    torch.testing.assert_close(logits(convert_model(reference), ids(1)), logits(reference, ids(1)), atol=ATOL, rtol=0)


def test_convert_by_repo_id_through_a_local_hub(bloom_folder, tmp_path: Path, monkeypatch) -> None:
    from huggingface_hub import HfApi

    from tests.hub_server import HubServer, use_endpoint

    src, reference = bloom_folder
    with HubServer(tmp_path / "hub") as server:
        use_endpoint(monkeypatch, server.url)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
        api = HfApi(endpoint=server.url, token="hf_test_token")
        api.create_repo("bigscience/tiny-bloom")
        api.upload_folder(folder_path=src, repo_id="bigscience/tiny-bloom")
        converted = convert_checkpoint("bigscience/tiny-bloom", tmp_path / "converted")
        assert any(path.startswith("/bigscience/tiny-bloom/resolve/") for _, path in server.requests)
    torch.testing.assert_close(logits(converted.eval(), ids()), logits(reference, ids()), atol=ATOL, rtol=0)
    assert AutoTokenizer.from_pretrained(tmp_path / "converted")("w5 w7")["input_ids"] == [5, 7]
