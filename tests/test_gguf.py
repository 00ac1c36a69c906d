"""`alibi-lm export --to gguf`: the MPT architecture in one GGUF file, as llama.cpp's converter writes it.

The names and keys checked here come from the `gguf` package (llama.cpp's own gguf-py): `MODEL_TENSORS[MPT]`, the
`mpt.*` metadata keys, the `gpt2` vocabulary. When `llama-cpp-python` is installed the file is also run by llama.cpp
and its greedy tokens are compared with ours (see the closing note for whether it could be built here).
"""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

from alibi_lm import AlibiConfig, AlibiForCausalLM
from alibi_lm.blocks import train_bpe_tokenizer
from alibi_lm.data import wikipedia_texts
from alibi_lm.export import write_gguf
from alibi_lm.model_files import prepare_for_hub
from tests.tiny import cli_error, perturb, word_tokenizer

gguf = pytest.importorskip("gguf", reason="gguf is in the dev and gguf extras")

L = 16


@pytest.fixture(scope="module")
def model_and_tokenizer():
    """A default-architecture model (the MPT subset), every weight randomised, with a 300-token byte-level BPE."""
    tokenizer = train_bpe_tokenizer(Dataset.from_dict({"text": wikipedia_texts("train")[:200]}), vocab_size=300)
    torch.manual_seed(0)
    config = AlibiConfig(
        vocab_size=304,  # 4 ids past the tokenizer's: written as UNUSED [PAD] tokens, as llama.cpp does
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        train_length=L,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    return perturb(AlibiForCausalLM(config)), tokenizer


def field(reader, key: str):
    value = reader.get_field(key)
    assert value is not None, f"{key} missing"
    return value.contents()


def test_gguf_metadata_and_tensors_follow_llama_cpp_mpt(model_and_tokenizer, tmp_path):
    model, tokenizer = model_and_tokenizer
    path = write_gguf(model, tokenizer, tmp_path / "model.gguf")
    reader = gguf.GGUFReader(path)
    assert field(reader, "general.architecture") == "mpt"
    config = model.config
    expected = {
        "mpt.context_length": 16 * L,
        "mpt.embedding_length": config.hidden_size,
        "mpt.block_count": config.num_hidden_layers,
        "mpt.feed_forward_length": 4 * config.hidden_size,
        "mpt.attention.head_count": config.num_attention_heads,
        "mpt.attention.max_alibi_bias": 8.0,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt-2",
        "tokenizer.ggml.eos_token_id": tokenizer.eos_token_id,
    }
    for key, value in expected.items():
        assert field(reader, key) == pytest.approx(value), key
    assert field(reader, "mpt.attention.layer_norm_epsilon") == pytest.approx(config.layer_norm_eps)
    tokens = field(reader, "tokenizer.ggml.tokens")
    assert len(tokens) == config.vocab_size
    assert tokens[: len(tokenizer)] == tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    assert tokens[-1] == f"[PAD{config.vocab_size - 1}]"
    types = field(reader, "tokenizer.ggml.token_type")
    assert types[tokenizer.eos_token_id] == gguf.TokenType.CONTROL and types[-1] == gguf.TokenType.UNUSED
    assert len(field(reader, "tokenizer.ggml.merges")) > 0

    # Tensor names: exactly the ones llama.cpp's MPT loader asks for (no output.weight: tied to token_embd).
    names = {t.name for t in reader.tensors}
    arch_tensors = {gguf.TENSOR_NAMES[t] for t in gguf.MODEL_TENSORS[gguf.MODEL_ARCH.MPT]}
    per_block = ["attn_norm", "attn_qkv", "attn_output", "ffn_norm", "ffn_up", "ffn_down"]
    want = {"token_embd.weight", "output_norm.weight"} | {
        f"blk.{i}.{name}.weight" for i in range(config.num_hidden_layers) for name in per_block
    }
    assert names == want
    allowed = {
        f"{template.format(bid=i)}.{kind}"
        for template in arch_tensors
        for i in range(config.num_hidden_layers)
        for kind in ("weight", "bias")
    }
    assert names <= allowed  # every name is one gguf knows for MPT
    # Values: the fused QKV is [q | k | v] (MptAttention's chunk(3)), the same bytes as torch's [out, in] weight.
    tensor = {t.name: t for t in reader.tensors}
    qkv = torch.cat([getattr(model.model.layers[0].self_attn, f"{n}_proj").weight for n in "qkv"]).detach()
    got = torch.from_numpy(tensor["blk.0.attn_qkv.weight"].data.copy()).reshape(qkv.shape)
    torch.testing.assert_close(got, qkv, rtol=0, atol=0)
    embed = torch.from_numpy(tensor["token_embd.weight"].data.copy()).reshape(config.vocab_size, config.hidden_size)
    torch.testing.assert_close(embed, model.model.embed_tokens.weight.detach(), rtol=0, atol=0)


def test_cli_writes_gguf_and_refuses_a_tokenizer_llama_cpp_cannot_read(model_and_tokenizer, tmp_path, capsys):
    from alibi_lm.cli import main

    model, tokenizer = model_and_tokenizer
    prepare_for_hub(model).save_pretrained(tmp_path / "bpe")
    tokenizer.save_pretrained(tmp_path / "bpe")
    assert main(["export", str(tmp_path / "bpe"), str(tmp_path / "out.gguf"), "--to", "gguf"]) == 0
    assert "llama.cpp architecture mpt" in capsys.readouterr().out
    assert field(gguf.GGUFReader(tmp_path / "out.gguf"), "general.architecture") == "mpt"

    prepare_for_hub(model).save_pretrained(tmp_path / "words")
    word_tokenizer(300).save_pretrained(tmp_path / "words")
    message = cli_error(["export", str(tmp_path / "words"), str(tmp_path / "w.gguf"), "--to", "gguf"], capsys)
    assert "needs a byte-level BPE tokenizer" in message and "WordLevel" in message
    assert not (tmp_path / "w.gguf").exists()


def test_llama_cpp_computes_our_logits_and_greedy_tokens(model_and_tokenizer, tmp_path):
    # llama-cpp-python compiles llama.cpp on install (no binary wheel on PyPI; ~25 min on 2 cores), so it is not in
    # the dev extra: install it to run this test (pip install llama-cpp-python).
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (it builds llama.cpp)")
    model, tokenizer = model_and_tokenizer
    path = write_gguf(model, tokenizer, tmp_path / "model.gguf")
    text = next(t for t in wikipedia_texts("test") if len(tokenizer(t)["input_ids"]) > 3 * L)
    prompt = tokenizer(text)["input_ids"][: 2 * L]  # the prompt alone runs past the training length
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits[0].numpy()  # [2L, V]
        ours = model.generate(torch.tensor([prompt]), max_new_tokens=3 * L, do_sample=False, pad_token_id=0)
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=16 * L, logits_all=True, verbose=False, n_threads=1)
    try:
        llm.eval(prompt)
        theirs_logits = llm.scores[: len(prompt)]
        # ggml's GELU is a tanh/table approximation of the exact one: close, not bit-equal.
        assert abs(theirs_logits - logits).max() < 1e-2 * abs(logits).max()
        theirs = []
        for token in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
            theirs.append(token)
            if len(theirs) == 3 * L:
                break
    finally:
        llm.close()
    assert theirs == ours[0, len(prompt) :].tolist()
