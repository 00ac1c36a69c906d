"""Sequence-classification, token-classification and question-answering heads on the ALiBi decoder (transformers'
generic heads, as Llama, MPT and Bloom have them): loading a causal LM checkpoint, padding, Trainer, pipeline, the
card and the CLI."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch
from transformers import (
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    Trainer,
    TrainingArguments,
    pipeline,
)

from alibi_lm import AlibiForSequenceClassification
from alibi_lm.card import build_model_card
from alibi_lm.loading import check_config_matches_weights
from tests.tiny import cli_error, perturb, random_ids, saved_folder, tiny_config, tiny_model, word_tokenizer

HEADS = [AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoModelForQuestionAnswering]


@pytest.fixture(scope="module")
def lm_folder(tmp_path_factory):
    """A perturbed causal LM saved as a Hub folder, and the model."""
    model = perturb(tiny_model(pad_token_id=0), seed=3)
    return saved_folder(model, tmp_path_factory.mktemp("lm") / "lm"), model


@pytest.mark.parametrize("auto_class", HEADS, ids=lambda c: c.__name__)
def test_a_causal_lm_checkpoint_loads_as_each_head_with_its_decoder(lm_folder, auto_class) -> None:
    folder, lm = lm_folder
    head = auto_class.from_pretrained(folder, num_labels=3).eval()
    assert type(head).__name__ == auto_class.__name__.replace("AutoModel", "Alibi")
    ids = random_ids(2, 40, seed=1).clamp(min=1)  # past the training length; no padding token
    with torch.no_grad():
        torch.testing.assert_close(head.model(ids).last_hidden_state, lm.model(ids).last_hidden_state, rtol=0, atol=0)
        outputs = head(ids)
    if auto_class is AutoModelForQuestionAnswering:
        assert outputs.start_logits.shape == outputs.end_logits.shape == (2, 40)
    else:
        assert outputs.logits.shape == ((2, 3) if auto_class is AutoModelForSequenceClassification else (2, 40, 3))


@pytest.mark.parametrize("side", ["right", "left"])
def test_padding_leaves_each_rows_class_and_token_logits_as_alone(side) -> None:
    config = tiny_config(pad_token_id=0, num_labels=3)
    torch.manual_seed(0)
    sequence = perturb(AutoModelForSequenceClassification.from_config(config), seed=4).eval()
    tokens = perturb(AutoModelForTokenClassification.from_config(config), seed=5).eval()
    rows = [random_ids(1, n, seed=n)[0].clamp(min=1) for n in (30, 19, 7)]
    width = max(len(r) for r in rows)
    padding = [torch.zeros(width - len(r), dtype=torch.long) for r in rows]
    pairs = zip(rows, padding)
    ids = torch.stack([torch.cat([r, p] if side == "right" else [p, r]) for r, p in pairs])
    mask = (ids != 0).long()
    with torch.no_grad():
        classes = sequence(ids, attention_mask=mask).logits
        per_token = tokens(ids, attention_mask=mask).logits
        for row, alone in enumerate(rows):
            torch.testing.assert_close(classes[row], sequence(alone[None]).logits[0], atol=1e-5, rtol=0)
            real = mask[row].bool()
            torch.testing.assert_close(per_token[row, real], tokens(alone[None]).logits[0], atol=1e-5, rtol=0)


def test_trainer_fine_tunes_a_classifier_from_the_lm(lm_folder, tmp_path) -> None:
    # The label is whether token 5 occurs in the row: the head sees only the last token, attention must fetch it.
    folder, _ = lm_folder
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(6, 99, (1024, 12), generator=generator)
    labels = torch.randint(0, 2, (1024,), generator=generator)
    ids[labels == 1, torch.randint(0, 12, (int(labels.sum()),), generator=generator)] = 5
    rows = [{"input_ids": i, "labels": y} for i, y in zip(ids, labels)]
    train, held_out = rows[:896], rows[896:]

    def accuracy() -> float:
        with torch.no_grad():
            logits = model.eval()(torch.stack([r["input_ids"] for r in held_out])).logits
        return (logits.argmax(-1) == torch.stack([r["labels"] for r in held_out])).float().mean().item()

    before = accuracy()
    arguments = TrainingArguments(
        tmp_path, num_train_epochs=6, per_device_train_batch_size=16, learning_rate=3e-3, report_to=[],
        save_strategy="no", logging_strategy="no", use_cpu=True, seed=0, disable_tqdm=True,
    )  # fmt: skip
    Trainer(model=model, args=arguments, train_dataset=train).train()
    assert before < 0.7 and accuracy() >= 0.9, (before, accuracy())


def test_a_saved_classifier_reloads_with_its_head(tmp_path) -> None:
    torch.manual_seed(0)
    model = perturb(AlibiForSequenceClassification(tiny_config(num_labels=4, pad_token_id=0)), seed=6).eval()
    model.save_pretrained(tmp_path / "classifier")
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path / "classifier").eval()
    ids = random_ids(3, 25, seed=2).clamp(min=1)
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, model(ids).logits, atol=0, rtol=0)
    assert {p.name for p in (tmp_path / "classifier").glob("*.py")} >= {"modeling_alibi.py", "alibi_masks.py"}


def test_text_classification_pipeline_runs_the_classifier(tmp_path) -> None:

    tokenizer = word_tokenizer(99)
    tokenizer.pad_token = "[UNK]"  # id 0, the config's pad_token_id
    torch.manual_seed(0)
    config = tiny_config(num_labels=2, pad_token_id=0, id2label={0: "NO", 1: "YES"}, label2id={"NO": 0, "YES": 1})
    model = perturb(AlibiForSequenceClassification(config), seed=7).eval()
    texts = ["w5 w9 w12", "w3 w3 w40 w41 w42 w7 w8"]
    answers = pipeline("text-classification", model=model, tokenizer=tokenizer, device="cpu")(texts)
    with torch.no_grad():
        for text, answer in zip(texts, answers):
            probabilities = model(tokenizer(text, return_tensors="pt")["input_ids"]).logits.softmax(-1)[0]
            assert answer["label"] == config.id2label[int(probabilities.argmax())]
            assert answer["score"] == pytest.approx(float(probabilities.max()), abs=1e-5)


def test_a_classifier_folder_verifies_and_its_card_runs_as_written(tmp_path, capsys) -> None:
    # `alibi-lm verify` and `push` built the LM from config.json and refused the classifier's score.weight.

    torch.manual_seed(0)
    config = tiny_config(num_labels=2, pad_token_id=98, id2label={0: "NO", 1: "YES"}, label2id={"NO": 0, "YES": 1})
    AlibiForSequenceClassification(config).save_pretrained(tmp_path / "classifier")
    word_tokenizer(99).save_pretrained(tmp_path / "classifier")
    check_config_matches_weights(tmp_path / "classifier")
    card = build_model_card(
        json.loads((tmp_path / "classifier" / "config.json").read_text()), str(tmp_path / "classifier")
    )
    assert card.data.pipeline_tag == "text-classification" and "text-classification" in card.data.tags
    usage = card.text.split("```python")[1].split("```")[0]
    assert "AutoModelForSequenceClassification.from_pretrained" in usage and "generate" not in usage
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(usage, {})  # noqa: S102 - the card's own snippet, on the folder it describes
    assert printed.getvalue().strip() in {"NO", "YES"}


@pytest.mark.parametrize("command", [["eval", "--lengths", "16"], ["generate", "--prompt", "w1 w2"]])
def test_language_model_commands_refuse_a_heads_folder_by_name(tmp_path, capsys, command) -> None:
    # transformers loads the decoder, drops the head with a warning and ties an LM head: perplexity of a classifier.

    folder = tmp_path / "classifier"
    AlibiForSequenceClassification(tiny_config(num_labels=2, pad_token_id=0)).save_pretrained(folder)
    word_tokenizer(99).save_pretrained(folder)
    message = cli_error([command[0], str(folder), *command[1:]], capsys)
    assert "holds AlibiForSequenceClassification, a fine-tuned head, not a language model" in message
    assert "AutoModelForSequenceClassification.from_pretrained" in message
