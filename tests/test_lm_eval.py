"""lm-evaluation-harness scores our model the way we do: its rolling log-likelihood equals `document_log_likelihood`.

lm-eval's `HFLM` is the harness most users run (`lm_eval --model hf --model_args pretrained=DIR,...`). Its
`loglikelihood_rolling` (the wikitext-style perplexity tasks) tokenizes, prepends a prefix token, cuts windows of
`max_length` tokens and sums log-probabilities, all in its own code; here it scores a held-out Wikipedia article
several times the model's training length, once with a window that holds the whole article (where it must equal our
single-pass scoring) and once with its default window, which it takes from `max_position_embeddings`.
"""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

from alibi_lm import AlibiConfig, AlibiForCausalLM
from alibi_lm.data import train_bpe_tokenizer, wikipedia_texts
from alibi_lm.evaluation import document_log_likelihood

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
        max_position_embeddings=L,
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
    request = Instance(request_type="loglikelihood_rolling", doc={}, arguments=(text,), idx=0)
    return lm.loglikelihood_rolling([request], disable_tqdm=True)[0]


def test_rolling_log_likelihood_equals_our_document_scoring(trained):
    model, tokenizer = trained
    text = next(t for t in wikipedia_texts("test") if len(tokenizer(t)["input_ids"]) > 6 * L)
    ours, n_tokens = document_log_likelihood(model, tokenizer, text)
    assert n_tokens > 6 * L  # scored in one pass, far past the training length
    theirs = rolling(model, tokenizer, text, max_length=8192)
    assert abs(theirs - ours) < 1e-3, (theirs, ours)  # a sum over ~300 tokens, each in fp32
    # By default HFLM windows at max_position_embeddings (the training length): each window's tokens lose the
    # context before it, so the number differs. Pass max_length to score whole documents.
    assert HFLM(pretrained=model, tokenizer=tokenizer, batch_size=1, device="cpu").max_length == L
    assert abs(rolling(model, tokenizer, text) - ours) > 0.1
