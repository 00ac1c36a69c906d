"""What Hugging Face users expect to work with the ALiBi model: pipeline, PEFT LoRA, gradient checkpointing in
Trainer, device_map="auto", and streaming generation from the command line.

ALiBi: Press, Smith & Lewis, "Train Short, Test Long", ICLR 2022. https://arxiv.org/abs/2108.12409
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import (
    AutoModelForCausalLM,
    PreTrainedTokenizerBase,
    TextStreamer,
    Trainer,
    TrainingArguments,
    pipeline,
)

from alibi_lm import AlibiForCausalLM
from alibi_lm.blocks import train_bpe_tokenizer
from alibi_lm.cli import main as cli_main
from alibi_lm.generate import generate
from tests.tiny import cli_error, random_ids, tiny_model

TEXTS = [
    "The cat sat on the mat and looked at the dog.",
    "A language model predicts the next word from the words before it.",
    "Attention with linear biases lets a model read longer texts than it saw in training.",
    "The dog sat on the rug, and the cat sat on the mat.",
] * 8
PROMPT = "The cat sat on"  # 4 tokens; 20 new tokens take the sequence past the training length of 16
VOCAB = 300
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerBase:
    return train_bpe_tokenizer(Dataset.from_dict({"text": TEXTS}), vocab_size=VOCAB)


@pytest.fixture(scope="module")
def model() -> AlibiForCausalLM:
    return tiny_model(seed=0, vocab_size=VOCAB)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, model: AlibiForCausalLM, tokenizer) -> Path:
    folder = tmp_path_factory.mktemp("checkpoint")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def greedy(model: AlibiForCausalLM, tokenizer: PreTrainedTokenizerBase, max_new_tokens: int) -> torch.Tensor:
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    return model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id)[0]


def test_pipeline_text_generation_equals_generate(checkpoint: Path, model: AlibiForCausalLM, tokenizer) -> None:
    pipe = pipeline("text-generation", model=str(checkpoint))
    assert isinstance(pipe.model, AlibiForCausalLM)
    expected = greedy(model, tokenizer, 20)
    assert len(expected) > tiny_model().config.train_length
    out = pipe(PROMPT, max_new_tokens=20, do_sample=False, return_tensors=True)
    assert out[0]["generated_token_ids"] == expected.tolist()
    text = pipe(PROMPT, max_new_tokens=20, do_sample=False)[0]["generated_text"]
    assert text == tokenizer.decode(expected, skip_special_tokens=True)


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # raised inside peft
def test_lora_on_hf_layer_names_trains_and_merges() -> None:
    from peft import LoraConfig, get_peft_model

    base = tiny_model(seed=0)
    ids = random_ids(4, 8).repeat(1, 2)  # each row twice: a copy task that attention alone can learn
    frozen = {name: p.detach().clone() for name, p in base.named_parameters()}
    with torch.no_grad():
        base_logits = base(ids).logits
    lora = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=LORA_TARGETS))
    adapted = sorted({name.split(".")[-1] for name, module in lora.named_modules() if hasattr(module, "lora_A")})
    assert adapted == sorted(LORA_TARGETS)
    trainable = [p for p in lora.parameters() if p.requires_grad]
    assert sum(p.numel() for p in trainable) == 2 * 4 * (4 * 32 + 4 * 32)  # layers x projections x (A + B)

    optimizer = torch.optim.AdamW(trainable, lr=3e-2)
    lora.train()
    losses = []
    for _ in range(15):
        loss = lora(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.2, losses
    base_now = {
        n.replace(".base_layer", ""): p for n, p in lora.get_base_model().named_parameters() if "lora_" not in n
    }
    assert base_now.keys() == frozen.keys()
    assert all(torch.equal(base_now[name], value) for name, value in frozen.items())  # only the adapters trained

    lora.eval()
    with torch.no_grad():
        unmerged = lora(ids).logits
        merged_model = lora.merge_and_unload()
        merged = merged_model(ids).logits
    assert type(merged_model) is AlibiForCausalLM
    assert not any("lora" in name for name, _ in merged_model.named_parameters())
    assert (unmerged - base_logits).abs().max() > 1e-2  # the adapters changed the model...
    torch.testing.assert_close(merged, unmerged, rtol=0, atol=1e-5)  # ...and merging keeps exactly that change


def _train(gradient_checkpointing: bool, output_dir: Path) -> tuple[list[float], dict[str, torch.Tensor], int]:
    """Three SGD steps of Trainer on the tiny model; returns logged losses, final weights, layer-0 attention calls."""
    model = tiny_model(seed=0)
    calls = []
    # Checkpointing wraps the layer's forward, so the recompute shows up as a second call of its submodules.
    model.model.layers[0].self_attn.register_forward_hook(lambda *_: calls.append(1))
    ids = random_ids(12, 16, seed=1)
    data = [{"input_ids": row, "labels": row} for row in ids]
    args = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=3,
        per_device_train_batch_size=4,
        optim="sgd",
        learning_rate=0.1,
        lr_scheduler_type="constant",
        activation_checkpointing=gradient_checkpointing,  # transformers 5.24's name for gradient_checkpointing
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=data)
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    return losses, {k: v.detach().clone() for k, v in model.state_dict().items()}, len(calls)


def test_gradient_checkpointing_in_trainer_gives_same_training(tmp_path: Path) -> None:
    losses, weights, calls = _train(False, tmp_path / "plain")
    ckpt_losses, ckpt_weights, ckpt_calls = _train(True, tmp_path / "checkpointed")
    assert calls == 3
    assert ckpt_calls == 6  # each layer runs again in the backward: checkpointing is really on
    assert len(losses) == 3
    assert ckpt_losses == pytest.approx(losses, abs=1e-6)
    initial = tiny_model(seed=0).state_dict()
    assert max((weights[name] - initial[name]).abs().max().item() for name in weights) > 1e-2
    for name, value in weights.items():
        # Equal weights after SGD steps mean equal gradients at every step.
        torch.testing.assert_close(ckpt_weights[name], value, rtol=0, atol=1e-6, msg=name)


def test_device_map_auto_loads(checkpoint: Path, model: AlibiForCausalLM) -> None:
    loaded = AutoModelForCausalLM.from_pretrained(checkpoint, device_map="auto")
    device = next(loaded.parameters()).device
    ids = random_ids(2, 24, vocab_size=VOCAB)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids.to(device)).logits.cpu(), model(ids).logits, rtol=0, atol=1e-5)


def test_device_map_auto_offloads_whole_layers(checkpoint: Path, model: AlibiForCausalLM, tmp_path: Path) -> None:
    # With room for the embeddings and about one layer, accelerate must offload decoder layers, and
    # `_no_split_modules` keeps each one whole; the hooks then move weights in per forward, cache included.
    def nbytes(module: torch.nn.Module) -> int:
        return sum(p.numel() * p.element_size() for p in module.parameters())

    budget = nbytes(model.model.embed_tokens) + nbytes(model.model.layers[0]) + 4096
    loaded = AutoModelForCausalLM.from_pretrained(
        checkpoint,
        device_map="auto",
        max_memory={"cpu": budget, **{gpu: 0 for gpu in range(torch.cuda.device_count())}},  # same split on a GPU box
        offload_folder=tmp_path,
    )
    placement = loaded.hf_device_map
    assert placement["model.embed_tokens"] == "cpu"
    layer_keys = [key for key in placement if key.startswith("model.layers")]
    assert any(placement[key] == "disk" for key in layer_keys), placement
    assert all(key.count(".") <= 2 for key in layer_keys), placement  # "model.layers[.i]", never inside a layer
    ids = random_ids(2, 24, vocab_size=VOCAB)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=1e-5)
    prompt = ids[:1, :4]
    assert torch.equal(
        loaded.generate(prompt, max_new_tokens=20, do_sample=False),
        model.generate(prompt, max_new_tokens=20, do_sample=False),
    )


class RecordingStreamer(TextStreamer):
    """A TextStreamer that records, with each piece of text it emits, how many token batches it had received."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        super().__init__(tokenizer, skip_prompt=False, skip_special_tokens=True)
        self.puts = 0
        self.chunks: list[tuple[int, str, bool]] = []

    def put(self, value: torch.Tensor) -> None:
        self.puts += 1
        super().put(value)

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        self.chunks.append((self.puts, text, stream_end))


def test_generate_streams_text_while_generating(model: AlibiForCausalLM, tokenizer) -> None:
    streamer = RecordingStreamer(tokenizer)
    text = generate(model, tokenizer, PROMPT, max_new_tokens=20, streamer=streamer)
    expected = greedy(model, tokenizer, 20)
    assert text == tokenizer.decode(expected[-20:], skip_special_tokens=True)
    assert streamer.puts == 1 + 20  # the prompt, then one call per new token
    emitted_during = {puts for puts, chunk, end in streamer.chunks if chunk and not end}
    assert len(emitted_during) >= 3, streamer.chunks  # text came out at several points, not all at the end
    assert "".join(chunk for _, chunk, _ in streamer.chunks) == tokenizer.decode(expected, skip_special_tokens=True)


def test_generate_cli_prints_prompt_and_continuation(
    checkpoint: Path, model: AlibiForCausalLM, tokenizer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["generate", str(checkpoint), "--prompt", PROMPT, "--max-new-tokens", "20"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(PROMPT)
    assert out == tokenizer.decode(greedy(model, tokenizer, 20), skip_special_tokens=True) + "\n"


def test_sampling_options_are_used_and_seeded(model: AlibiForCausalLM, tokenizer) -> None:
    options = {"max_new_tokens": 12, "do_sample": True, "temperature": 5.0, "top_k": 0, "seed": 3}
    first = generate(model, tokenizer, PROMPT, **options)
    assert generate(model, tokenizer, PROMPT, **options) == first
    assert first != generate(model, tokenizer, PROMPT, max_new_tokens=12)


@pytest.mark.parametrize(
    "options, message",
    [({"max_new_tokens": 0}, "max_new_tokens"), ({"do_sample": True, "temperature": 0.0}, "temperature")],
)
def test_generate_rejects_bad_options(model: AlibiForCausalLM, tokenizer, options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate(model, tokenizer, PROMPT, **options)


def test_generate_cli_on_truncated_checkpoint_names_the_file(checkpoint: Path, tmp_path: Path, capsys) -> None:
    for file in checkpoint.iterdir():
        (tmp_path / file.name).write_bytes(file.read_bytes())
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert re.search(
        r"model\.safetensors .*truncated", cli_error(["generate", str(tmp_path), "--prompt", PROMPT], capsys)
    )


def test_generate_cli_without_tokenizer(tmp_path: Path, capsys) -> None:
    tiny_model().save_pretrained(tmp_path)
    assert "no tokenizer files" in cli_error(["generate", str(tmp_path), "--prompt", PROMPT], capsys)


def test_prompts_padded_by_the_tokenizer_generate_each_prompts_own_tokens(model: AlibiForCausalLM, tokenizer) -> None:
    # tokenizer(prompts, padding=True) then generate: right padding would put each short row's first new token after
    # a padding slot (transformers warns "right-padding was detected"); the tokenizer pads on the left.
    prompts = [PROMPT, TEXTS[2], "A"]
    batch = tokenizer(prompts, padding=True, return_tensors="pt")
    assert tokenizer.padding_side == "left" and not bool(batch.attention_mask[:, -1].eq(0).any())
    out = model.generate(**batch, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    width = batch.input_ids.shape[1]
    for row, prompt in enumerate(prompts):
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        alone = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        assert out[row, width:].tolist() == alone[0, ids.shape[1] :].tolist()


def test_gradient_accumulation_with_uneven_label_counts_takes_the_step_of_one_whole_batch(tmp_path: Path):
    # Trainer passes `num_items_in_batch` to a model whose forward takes loss kwargs, so that 4 micro-batches of 2
    # rows sum to the loss of the 8 rows together, not to a mean of 4 means. Rows here keep 32 down to 4 labels each:
    # with the loss a mean per micro-batch (the bug transformers fixed in 4.46), the weights after one SGD step differ
    # by 1.9e-2; summed as they should be, by 6e-8.
    generator = torch.Generator().manual_seed(0)
    rows = []
    for i in range(8):
        ids = torch.randint(0, 99, (32,), generator=generator)
        rows.append({"input_ids": ids.tolist(), "labels": ids.index_fill(0, torch.arange(i * 4), -100).tolist()})

    def weights_after_one_step(batch_size: int, accumulation: int) -> torch.Tensor:
        model = tiny_model().train()
        args = TrainingArguments(
            tmp_path / f"{batch_size}x{accumulation}", per_device_train_batch_size=batch_size,
            gradient_accumulation_steps=accumulation, max_steps=1, learning_rate=1.0, optim="sgd",
            lr_scheduler_type="constant", report_to=[], use_cpu=True, save_strategy="no", seed=0,
        )  # fmt: skip
        Trainer(model=model, args=args, train_dataset=Dataset.from_list(rows)).train()
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    torch.testing.assert_close(weights_after_one_step(2, 4), weights_after_one_step(8, 1), atol=1e-6, rtol=0)
