"""transformers' continuous batching (`generate_batch`) on alibi-lm models: the bias per request of a flattened row."""

from __future__ import annotations

import json
import time

import pytest
import torch
from transformers import ContinuousBatchingConfig, GenerationConfig
from transformers.generation.continuous_batching.utils import build_attention_mask

from alibi_lm.modeling import alibi_paged
from alibi_lm.modeling.alibi_masks import ALIBI_FUSED, alibi_bias, get_alibi_slopes
from alibi_lm.modeling.alibi_paged import continuous_batch_mask, paged_alibi_mask, paged_key_positions
from tests.tiny import perturb, random_ids, tiny_model

# Three requests of one step: (cached tokens, new tokens).
REQUESTS = [(3, 2), (0, 4), (6, 1)]


def flattened_step(requests: list[tuple[int, int]], padding: int = 0):
    """The inputs continuous batching gives the model for one step: query positions, boundaries, its sdpa mask."""
    positions = [p for past, new in requests for p in range(past, past + new)]
    cu_q, cu_k = [0], [0]
    for past, new in requests:
        cu_q.append(cu_q[-1] + new)
        cu_k.append(cu_k[-1] + past + new)
    mask = torch.zeros(1, 1, cu_q[-1], cu_k[-1] + padding)
    mask.fill_(torch.finfo(mask.dtype).min)
    build_attention_mask(mask, cu_q, cu_k)  # transformers' own block-diagonal causal mask
    as_tensor = lambda values: torch.tensor(values, dtype=torch.int32)  # noqa: E731
    return as_tensor(positions)[None], as_tensor(cu_q), as_tensor(cu_k), mask


def test_key_positions_restart_at_each_request() -> None:
    positions, cu_q, cu_k, _ = flattened_step(REQUESTS)
    keys = paged_key_positions(positions[0].long(), cu_q, cu_k, key_length=int(cu_k[-1]))
    assert keys.tolist() == [0, 1, 2, 3, 4] + [0, 1, 2, 3] + [0, 1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("windows", [None, [1, 2, 4, 8]], ids=["dense", "windowed"])
def test_paged_mask_is_the_alibi_bias_inside_each_request_and_hidden_across(windows) -> None:
    heads = 4
    positions, cu_q, cu_k, mask = flattened_step(REQUESTS, padding=3)
    slopes = get_alibi_slopes(heads)
    window_tensor = None if windows is None else torch.tensor(windows)
    bias = lambda head, distance: alibi_bias(slopes[head], distance)  # noqa: E731
    built = paged_alibi_mask(mask, positions, cu_q, cu_k, bias, (0, heads), window_tensor)[0]  # [H, Q, K]
    hidden = torch.finfo(built.dtype).min
    expected = torch.full_like(built, hidden)
    for (past, new), q0, k0 in zip(REQUESTS, cu_q.tolist(), cu_k.tolist()):
        for i in range(new):
            for j in range(past + i + 1):  # causal within the request, keys in order from its first token
                for h in range(heads):
                    distance = past + i - j
                    if windows is None or distance <= windows[h]:
                        expected[h, q0 + i, k0 + j] = -slopes[h] * distance
    torch.testing.assert_close(built, expected)


def cb_config(**overrides) -> ContinuousBatchingConfig:
    """A small paged cache (the default sizes it from free memory) and no log-probability processors."""
    sizes = dict(num_blocks=16, page_size=16, max_batch_tokens=64)
    return ContinuousBatchingConfig(**{**sizes, "return_logprobs": True, **overrides})


def reference(model, prompt: list[int], new_tokens: int) -> tuple[list[int], list[float]]:
    """Greedy tokens of `generate` on the prompt alone, and the log-probability of each."""
    config = GenerationConfig(max_new_tokens=new_tokens, do_sample=False, pad_token_id=0, eos_token_id=None)
    config.update(output_logits=True, return_dict_in_generate=True)
    ids = torch.tensor([prompt])  # with its mask: generate would read a token 0 (pad_token_id) as padding
    out = model.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config)
    tokens = out.sequences[0, len(prompt) :].tolist()
    logprobs = [torch.log_softmax(s[0].float(), -1)[t].item() for s, t in zip(out.logits, tokens)]
    return tokens, logprobs


def refuse(*args, **kwargs):
    raise AssertionError("the [1, H, Q, K] mask was built")


@pytest.fixture(params=["request by request", "one mask", "off the CPU, a large mask"])
def path(request, monkeypatch) -> str:
    """The CPU's default (each request on its own keys), the one `[1, H, Q, K]` mask other devices take, and what
    they take when that mask would pass ONE_MASK_BYTES (request by request)."""
    if request.param != "request by request":
        monkeypatch.setattr(alibi_paged, "blocked_by_default", lambda device, dtype: False)
    if request.param == "off the CPU, a large mask":
        monkeypatch.setattr(alibi_paged, "ONE_MASK_BYTES", 0)
    if request.param != "one mask":
        monkeypatch.setattr(alibi_paged, "paged_alibi_mask", refuse)
    return request.param


@pytest.mark.parametrize(
    "overrides",
    [{}, {"alibi_window_cutoff": 4.0}, {"position_encoding": "sinusoidal"}],
    ids=["alibi", "windowed", "sinusoidal"],
)
def test_generate_batch_gives_each_prompt_what_generate_gives_it_alone(overrides, path) -> None:
    model = perturb(tiny_model(attn_implementation=None, **overrides), seed=1)
    prompts = [random_ids(1, n, seed=n)[0].tolist() for n in (5, 23, 40, 9)]
    config = GenerationConfig(max_new_tokens=8, do_sample=False, eos_token_id=-1, pad_token_id=0)
    outputs = model.generate_batch(inputs=prompts, generation_config=config, continuous_batching_config=cb_config())
    assert len(outputs) == len(prompts)
    for output in outputs.values():
        assert output.error is None
        tokens, logprobs = reference(model, output.prompt_ids, 8)
        assert output.generated_tokens == tokens
        torch.testing.assert_close(torch.tensor(output.logprobs), torch.tensor(logprobs), atol=1e-5, rtol=0)
    # The manager ran sdpa; the model is back on its own default afterwards.
    assert model.config._attn_implementation == ALIBI_FUSED


def test_continuous_batching_leaves_the_users_config_alone() -> None:
    model = tiny_model()
    given = cb_config()
    config = GenerationConfig(max_new_tokens=2, do_sample=False, eos_token_id=-1, pad_token_id=0)
    model.generate_batch(inputs=random_ids(2, 6).tolist(), generation_config=config, continuous_batching_config=given)
    assert given.auto_switch_to_flash  # switched off on a copy only (no paged flash kernel adds a bias)
    assert model.config._attn_implementation == "sdpa"


def test_a_step_without_the_sdpa_mask_is_refused_by_name() -> None:
    # A flash kernel under continuous batching hands no mask: the bias would have nothing to go into.
    model = tiny_model()
    positions, cu_q, cu_k, _ = flattened_step(REQUESTS)
    kwargs = {"cu_seq_lens_q": cu_q, "cu_seq_lens_k": {"full_attention": cu_k}}
    with pytest.raises(ValueError, match=r"sdpa mask \(attn_implementation=.sdpa.\).*model.generate_batch"):
        continuous_batch_mask(model.model.position_encoding, (0, 4), None, positions, kwargs, refuse)


def test_prompts_sharing_a_prefix_keep_their_own_tokens(path) -> None:
    # Block sharing (on by default) may hand them one cached prefix: ALiBi keys carry no position, so it fits each.
    # No request outgrows the 10,240 keys the CPU keeps, so the manager keeps full pages, which share blocks.
    model = perturb(tiny_model(), seed=2)
    prefix = random_ids(1, 40, seed=7)[0].tolist()  # two full 16-token pages and part of a third
    prompts = [prefix + random_ids(1, n, seed=n)[0].tolist() for n in (3, 11, 20)]
    config = GenerationConfig(max_new_tokens=6, do_sample=False, eos_token_id=-1, pad_token_id=0)
    caches = []
    hook = model.model.register_forward_pre_hook(lambda m, a, kwargs: caches.append(kwargs["cache"]), with_kwargs=True)
    outputs = model.generate_batch(inputs=prompts, generation_config=config, continuous_batching_config=cb_config())
    hook.remove()
    assert caches[0].use_prefix_sharing and list(caches[0].cache_allocators) == ["full_attention"]
    for output in outputs.values():
        tokens, logprobs = reference(model, output.prompt_ids, 6)
        assert output.generated_tokens == tokens
        torch.testing.assert_close(torch.tensor(output.logprobs), torch.tensor(logprobs), atol=1e-5, rtol=0)


def test_request_spans_take_each_requests_last_keys_as_a_sliding_cache_holds_them() -> None:
    positions, cu_q, cu_k, _ = flattened_step(REQUESTS)
    spans = [(0, 2, 0, 5), (2, 6, 5, 9), (6, 7, 9, 16)]
    assert alibi_paged.request_spans(positions, cu_q, cu_k) == spans
    # Keys that begin later than position 0 (a sliding cache dropped the first): the same spans, the same distances.
    assert alibi_paged.request_spans(positions + 1, cu_q, cu_k) == spans
    # More keys than the request has tokens fit no layout: the one mask runs.
    assert alibi_paged.request_spans(positions - 1, cu_q, cu_k) is None


def test_a_step_with_layers_of_two_types_is_refused_by_name() -> None:
    positions, cu_q, cu_k, mask = flattened_step(REQUESTS)
    kwargs = {"cu_seq_lens_q": cu_q, "cu_seq_lens_k": {"full_attention": cu_k, "sliding_attention": cu_k}}
    masks = {"full_attention": mask, "sliding_attention": mask}
    with pytest.raises(ValueError, match=r"all of one attention type.*\['full_attention', 'sliding_attention'\]"):
        continuous_batch_mask(tiny_model().model.position_encoding, (0, 4), masks, positions, kwargs, refuse)


# Steep slopes (alibi_max_bias=2, 0.71 to 0.25): windowed with cutoff 4, windows of 5, 8, 11 and 16 tokens; dense on
# the CPU, the default path drops keys past e^-40, 160 tokens back for the mildest head. (overrides, keys kept,
# prompt lengths, paged cache blocks of 16 tokens): each cache is smaller than every request's prompt + 30 tokens.
KEPT_KEYS = {
    "windowed": ({"alibi_window_cutoff": 4.0}, 16, (40, 45), 4),
    "dense on the CPU": ({}, 160, (200, 210), 12),
}


@pytest.mark.parametrize("case", KEPT_KEYS, ids=list(KEPT_KEYS))
def test_a_manager_keeps_only_the_keys_some_head_reads(case, path, monkeypatch) -> None:
    # The cache runs the requests only by forgetting older keys (a ring of pages per request).
    overrides, kept, lengths, blocks = KEPT_KEYS[case]
    model = perturb(tiny_model(attn_implementation=None, alibi_max_bias=2.0, **overrides), seed=1)
    assert model.model.keys_to_keep() == kept
    windows = []
    caches = []

    def record(module, args, kwargs):
        windows.append(model.config.sliding_window)
        caches.append(kwargs.get("cache", kwargs.get("past_key_values")))

    hook = model.model.register_forward_pre_hook(record, with_kwargs=True)
    prompts = [random_ids(1, n, seed=n)[0].tolist() for n in lengths]
    config = GenerationConfig(max_new_tokens=30, do_sample=False, eos_token_id=-1, pad_token_id=0)
    small = cb_config(num_blocks=blocks)
    outputs = model.generate_batch(inputs=prompts, generation_config=config, continuous_batching_config=small)
    hook.remove()
    for output in outputs.values():
        assert output.error is None
        tokens, logprobs = reference(model, output.prompt_ids, 30)
        assert output.generated_tokens == tokens
        torch.testing.assert_close(torch.tensor(output.logprobs), torch.tensor(logprobs), atol=1e-5, rtol=0)
    assert set(windows) == {kept + 1} and not hasattr(model.config, "sliding_window")  # while the manager ran only
    (allocator,) = caches[0].cache_allocators.values()  # one ring of pages, read by index (the tokens above)
    assert allocator.sliding_window == kept + 1 and "update" in vars(allocator)
    # Keeping every key, the same cache cannot hold them.
    monkeypatch.setattr(type(model.model), "keys_to_keep", lambda self, *args: None)
    outputs = model.generate_batch(inputs=prompts, generation_config=config, continuous_batching_config=small)
    assert all("No requests can be scheduled" in str(output.error) for output in outputs.values())


@pytest.mark.parametrize(
    "kept, windowed, prompt, new, max_length, ring",
    [
        (None, False, 9000, 9000, 20, False),  # every key read: full pages
        (160, False, 100, 61, 20, False),  # 161 tokens: no more than a ring of 161 holds; full pages share prefixes
        (160, False, 100, 62, 20, True),  # 162 may outgrow it: the ring
        (160, False, 150, 0, 20, True),  # no max_new_tokens: up to max_length more
        (16, True, 0, 0, 20, True),  # sizes unknown (a manager started by hand): windowed takes the ring
        (10240, False, 0, 0, 20, False),  # and dense ALiBi full pages
    ],
)
def test_the_ring_is_taken_where_a_request_may_outgrow_the_keys_kept(kept, windowed, prompt, new, max_length, ring):
    from transformers.generation.continuous_batching.utils import WorkloadHints

    hints = WorkloadHints(max_prompt_length=prompt, max_generated_length=new, num_requests=4) if prompt else None
    assert alibi_paged.ring_pays(kept, windowed, hints, max_length) is ring


def test_a_compiled_manager_gives_generates_tokens() -> None:
    # default_compile_level=1 compiles the model's forward (dynamic shapes): request by request, inductor failed every
    # request ("Exponent must be non-negative"); compiled steps take the one mask.
    model = perturb(tiny_model(attn_implementation=None), seed=1)
    prompts = [random_ids(1, n, seed=n)[0].tolist() for n in (5, 23, 40, 9)]
    config = GenerationConfig(max_new_tokens=4, do_sample=False, eos_token_id=-1, pad_token_id=0)
    compiled = cb_config(default_compile_level=1)
    outputs = model.generate_batch(inputs=prompts, generation_config=config, continuous_batching_config=compiled)
    for output in outputs.values():
        assert output.error is None
        tokens, logprobs = reference(model, output.prompt_ids, 4)
        assert output.generated_tokens == tokens
        torch.testing.assert_close(torch.tensor(output.logprobs), torch.tensor(logprobs), atol=1e-5, rtol=0)


def test_forked_sequences_each_continue_their_prompt() -> None:
    # num_return_sequences forks a request after its prefill: the copies read the parent's cache blocks. Forks need
    # sampling; top_k=1 samples the greedy token.
    model = perturb(tiny_model(), seed=2)
    prompts = [random_ids(1, n, seed=n)[0].tolist() for n in (23, 40)]
    config = GenerationConfig(
        max_new_tokens=5, do_sample=True, top_k=1, num_return_sequences=2, eos_token_id=-1, pad_token_id=0
    )  # fmt: skip
    outputs = model.generate_batch(inputs=prompts, generation_config=config, continuous_batching_config=cb_config())
    assert len(outputs) == 4
    for output in outputs.values():
        assert output.error is None and output.generated_tokens == reference(model, output.prompt_ids, 5)[0]


def test_a_manager_stopped_without_waiting_keeps_the_window_until_its_thread_ends() -> None:
    # stop(block=False) returns while the thread may still run steps, which read config.sliding_window.
    model = perturb(tiny_model(alibi_max_bias=2.0, alibi_window_cutoff=4.0), seed=1)
    config = GenerationConfig(max_new_tokens=30, do_sample=False, eos_token_id=-1, pad_token_id=0)
    manager = model.init_continuous_batching(generation_config=config, continuous_batching_config=cb_config())
    assert model.config.sliding_window == 17
    manager.start()
    manager.add_request(random_ids(1, 40)[0].tolist(), request_id="long")
    thread = manager._generation_thread
    manager.stop(block=False)
    thread.join(timeout=60)
    for _ in range(600):  # the restoring thread runs once the generation thread has ended
        if not hasattr(model.config, "sliding_window"):
            break
        time.sleep(0.05)
    assert not hasattr(model.config, "sliding_window") and model.config._attn_implementation == "sdpa"
    result = manager.get_result("long", timeout=1)  # flushed: the request ran to its end on the sliding cache
    assert result is not None and result.error is None and len(result.generated_tokens) == 30


def test_a_save_while_a_manager_runs_writes_the_models_config_not_the_runs_window(tmp_path) -> None:
    model = perturb(tiny_model(alibi_max_bias=2.0, alibi_window_cutoff=4.0), seed=1)
    config = GenerationConfig(max_new_tokens=4, do_sample=False, eos_token_id=-1, pad_token_id=0)
    manager = model.init_continuous_batching(generation_config=config, continuous_batching_config=cb_config())
    try:
        assert model.config.sliding_window == 17  # lent to transformers' paged cache for the run
        model.save_pretrained(tmp_path / "during")
        assert "sliding_window" not in model.config.to_dict() and "sliding_window" not in model.config.to_diff_dict()
    finally:
        manager.stop()
    saved = json.loads((tmp_path / "during" / "config.json").read_text())
    assert "sliding_window" not in saved and not any(key.startswith("_continuous") for key in saved)
    model.save_pretrained(tmp_path / "after")
    assert saved == json.loads((tmp_path / "after" / "config.json").read_text())
    model.config.sliding_window = 99  # a user's own attribute is theirs to save
    assert model.config.to_dict()["sliding_window"] == 99


def test_sliding_reads_by_index_are_transformers_masked_scatter_row_for_row() -> None:
    # transformers' own SlidingAttentionCacheAllocator.update on a stand-in holding what it reads: a cache of 12 slots
    # (slot 1 the sentinel), two requests reading 3 and 3 cached keys and 2 and 3 new ones, 2 rows of padding.
    from types import SimpleNamespace

    from transformers.generation.continuous_batching.cache_allocators import SlidingAttentionCacheAllocator

    def stand_in():
        cache = torch.randn(12, 2, 4, generator=torch.Generator().manual_seed(0))
        allocator = SimpleNamespace(_kv_token_views={0: (cache.clone(), cache.clone() + 1)}, sentinel_index=1)
        allocator.update = SlidingAttentionCacheAllocator.update.__get__(allocator)
        return SimpleNamespace(cache_allocators={"sliding_attention": allocator}), allocator

    keys, values = torch.randn(7, 2, 4), torch.randn(7, 2, 4)
    read = torch.tensor([5, 9, 2, 1, 1, 7, 3, 11, 1, 1, 1])
    write = torch.tensor([6, 8, 10, 2, 7, 0, 0])  # slot 0: where padding rows are written
    _, reference = stand_in()
    expected = reference.update(keys, values, 0, read, write)
    cache, allocator = stand_in()
    alibi_paged.read_sliding_cache_by_index(cache)
    assert "update" in vars(allocator) and allocator.update is not reference.update
    got = allocator.update(keys, values, 0, read, write)
    for a, b in zip(got + allocator._kv_token_views[0], expected + reference._kv_token_views[0]):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
