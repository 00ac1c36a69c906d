"""lm-evaluation-harness scores our model the way we do: its rolling log-likelihood equals `document_log_likelihood`.

lm-eval's `HFLM` is the harness most users run (`lm_eval --model hf --model_args pretrained=DIR,...`). Its
`loglikelihood_rolling` (the wikitext-style perplexity tasks) tokenizes, prepends a prefix token, cuts windows of
`max_length` tokens and sums log-probabilities, all in its own code; here it scores a held-out Wikipedia article
several times the model's training length, once with a window that holds the whole article (where it must equal our
single-pass scoring) and once as a user runs it, from a saved folder with no `max_length`: its default window is the
config's `max_position_embeddings`, the context (16 x the training length), so it scores the long context too.
"""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

from alibi_lm import AlibiConfig, AlibiForCausalLM
from alibi_lm.blocks import train_bpe_tokenizer
from alibi_lm.data import wikipedia_texts
from alibi_lm.model_files import prepare_for_hub
from alibi_lm.scoring import document_log_likelihood

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is in the dev and eval extras")
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402

L = 32


@pytest.fixture(scope="module")
def trained():
    """A tiny ALiBi model trained for 80 steps at L = 32 on Wikipedia text, and its BPE tokenizer."""
    texts = wikipedia_texts("train")[:400]
    tokenizer = train_bpe_tokenizer(Dataset.from_dict({"text": texts}), vocab_size=400)
    torch.manual_seed(0)
    config = AlibiConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        train_length=L,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    model = AlibiForCausalLM(config)
    stream = torch.tensor([i for t in texts for i in tokenizer(t)["input_ids"] + [tokenizer.eos_token_id]])
    blocks = stream[: stream.numel() // L * L].view(-1, L)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(80):
        batch = blocks[step * 8 % len(blocks) :][:8]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval(), tokenizer


def rolling(model, tokenizer, text: str, **kwargs) -> float:
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=1, device="cpu", **kwargs)
    return score(lm, text)


def score(lm, text: str) -> float:
    request = Instance(request_type="loglikelihood_rolling", doc={}, arguments=(text,), idx=0)
    return lm.loglikelihood_rolling([request], disable_tqdm=True)[0]


def test_rolling_log_likelihood_equals_our_document_scoring(trained):
    model, tokenizer = trained
    text = next(t for t in wikipedia_texts("test") if len(tokenizer(t)["input_ids"]) > 6 * L)
    ours, n_tokens = document_log_likelihood(model, tokenizer, text)
    assert n_tokens > 6 * L  # scored in one pass, far past the training length
    theirs = rolling(model, tokenizer, text, max_length=8192)
    assert abs(theirs - ours) < 1e-3, (theirs, ours)  # a sum over ~300 tokens, each in fp32


def test_default_window_is_the_long_context(trained, tmp_path):
    """`lm_eval --model hf --model_args pretrained=DIR`: no max_length, the folder as saved."""
    model, tokenizer = trained
    prepare_for_hub(model)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    text = next(t for t in wikipedia_texts("test") if 10 * L < len(tokenizer(t)["input_ids"]) < 16 * L)
    ours, n_tokens = document_log_likelihood(model, tokenizer, text)
    assert n_tokens > 10 * L
    lm = HFLM(pretrained=str(tmp_path), batch_size=1, device="cpu")
    assert lm.max_length == 16 * L  # max_position_embeddings: the whole document fits one window
    theirs = score(lm, text)
    assert abs(theirs - ours) < 1e-3, (theirs, ours)
    # Windows of the training length would cut the document into 11 and lose the context before each.
    assert abs(rolling(model, tokenizer, text, max_length=L) - ours) > 0.1
