"""The tiny shared tester: one tiny config and builders every test file uses."""

from __future__ import annotations

import torch

from alibi_lm import AlibiConfig, AlibiForCausalLM

# Every Auto class a saved folder's config.json maps to its remote code (`configuration_alibi.AUTO_MAP`).
AUTO_CLASSES = {
    "AutoConfig",
    "AutoModel",
    "AutoModelForCausalLM",
    "AutoModelForSequenceClassification",
    "AutoModelForTokenClassification",
    "AutoModelForQuestionAnswering",
}

TINY = dict(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    train_length=16,
)


def tiny_config(**overrides) -> AlibiConfig:
    """A 2-layer, hidden-32, vocab-99 config; keyword arguments override any field."""
    return AlibiConfig(**{**TINY, **overrides})


def tiny_model(seed: int = 0, attn_implementation: str = "sdpa", **overrides) -> AlibiForCausalLM:
    """A seeded tiny model in eval mode."""
    torch.manual_seed(seed)
    config = tiny_config(**overrides)
    model = AlibiForCausalLM._from_config(config, attn_implementation=attn_implementation)
    return model.eval()


def random_ids(batch: int, length: int, vocab_size: int = TINY["vocab_size"], seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, length), generator=generator)


def perturb(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Randomise every parameter, biases and LayerNorms included, so a wrong mapping cannot hide behind init zeros."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return model.eval()


def word_tokenizer(vocab_size: int):
    """A word-level tokenizer over "w1" ... "w{vocab_size - 1}" (id 0 is "[UNK]"), for folders that need one."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, **{f"w{i}": i for i in range(1, vocab_size)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")


def saved_folder(model: torch.nn.Module, folder):
    """`model` saved as a Hub-format folder with a word-level tokenizer over its vocabulary; returns the folder."""
    from alibi_lm.model_files import prepare_for_hub

    tokenizer = word_tokenizer(model.config.vocab_size)
    prepare_for_hub(model, tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def cli_error(argv: list[str], capsys) -> str:
    """Run `alibi-lm ARGV`, expect it to fail the way the CLI reports errors, and return its stderr message.

    Asserts exit status 1 and one line on stderr starting `alibi-lm COMMAND: error:`, without a traceback.
    """
    from alibi_lm.cli import main

    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert lines and lines[-1].startswith(f"alibi-lm {argv[0]}: error: "), err
    return lines[-1]
