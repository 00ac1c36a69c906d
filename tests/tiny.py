"""The tiny shared tester: one tiny config and builders every test file uses."""

from __future__ import annotations

import torch

from alibi_lm import AlibiConfig, AlibiForCausalLM

TINY = dict(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=16,
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
