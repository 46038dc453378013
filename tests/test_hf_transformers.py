"""The Hugging Face transformers integration: tiny randomly initialised models run with
`attn_implementation="attnc"` give the logits and gradients of `attn_implementation="eager"`; the mask function
reads transformers' mask compositions right (checked against transformers' own dense masks); bad input is
refused by name."""

from __future__ import annotations

import copy
import inspect
import re
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
masking_utils = pytest.importorskip("transformers.masking_utils")

import attnc.integrations.transformers as attnc_hf  # noqa: E402
from attnc.integrations.transformers_masks import MaskStructure, TransformersMask  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VOCAB, LENGTH = 100, 16
COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, head_dim=8, max_position_embeddings=64, initializer_range=0.3)


def _configs() -> dict[str, object]:
    configs = {
        "llama": transformers.LlamaConfig(**COMMON),
        "qwen2": transformers.Qwen2Config(**COMMON),
        "mistral": transformers.MistralConfig(**COMMON, sliding_window=5),
        "gemma2": transformers.Gemma2Config(**COMMON, sliding_window=5, attn_logit_softcapping=2.0,
                                            final_logit_softcapping=None, query_pre_attn_scalar=12),
    }
    if hasattr(transformers, "Gemma3TextConfig"):
        configs["gemma3"] = transformers.Gemma3TextConfig(**COMMON, sliding_window=5, query_pre_attn_scalar=12,
                                                          layer_types=["sliding_attention", "full_attention"])
    return configs


CONFIGS = _configs()
IMPLEMENTATION = attnc_hf.TransformersAttention(backend="reference")


def _install(name: str, implementation: attnc_hf.TransformersAttention) -> None:
    transformers.AttentionInterface.register(name, implementation)
    masking_utils.AttentionMaskInterface.register(name, implementation.mask)


@pytest.fixture(autouse=True)
def _registered():
    # the documentation's snippet registers "attnc" anew; every test starts from the reference-backed one
    _install("attnc", IMPLEMENTATION)


@pytest.fixture(scope="module")
def models() -> dict[str, tuple[torch.nn.Module, torch.nn.Module]]:
    """(eager, attnc) pairs with the same weights, per family."""
    _install("attnc", IMPLEMENTATION)
    pairs = {}
    for family, config in CONFIGS.items():
        torch.manual_seed(0)
        # each model its own config: from_config records the implementation in the config it is given
        eager = transformers.AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation="eager")
        ours = transformers.AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation="attnc")
        eager.eval(), ours.eval()
        ours.load_state_dict(eager.state_dict())
        assert (eager.config._attn_implementation, ours.config._attn_implementation) == ("eager", "attnc")
        pairs[family] = (eager, ours)
    return pairs


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two sequences, the first left-padded by 5 tokens."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (2, LENGTH), generator=generator)
    attention_mask = torch.ones(2, LENGTH, dtype=torch.long)
    attention_mask[0, :5] = 0
    return ids, attention_mask


def _calls(monkeypatch: pytest.MonkeyPatch) -> list[MaskStructure]:
    """Records the mask structure of every attention call attnc serves."""
    seen: list[MaskStructure] = []
    original = attnc_hf.TransformersAttention.__call__

    def spy(self, module, query, key, value, attention_mask, **kwargs):
        seen.append(attention_mask.structure if isinstance(attention_mask, TransformersMask) else attention_mask)
        return original(self, module, query, key, value, attention_mask, **kwargs)

    monkeypatch.setattr(attnc_hf.TransformersAttention, "__call__", spy)
    return seen


@pytest.mark.parametrize("family", list(CONFIGS))
def test_logits_match_eager_on_a_left_padded_batch(models, family, monkeypatch):
    eager, ours = models[family]
    ids, attention_mask = _batch()
    seen = _calls(monkeypatch)
    with torch.no_grad():
        expected = eager(ids, attention_mask=attention_mask).logits
        got = ours(ids, attention_mask=attention_mask).logits
    assert len(seen) == 2 and all(s.causal and s.padding == "range" for s in seen)
    if family in ("mistral", "gemma2", "gemma3"):
        assert any(s.window for s in seen), "the sliding window reached attnc"
    if family in ("gemma2", "gemma3"):
        assert not all(s.window for s in seen), "global layers alternate with sliding ones"
    assert not got.isnan().any()
    real = attention_mask.bool()  # eager's rows of padded queries are uniform noise; attnc's are zero
    torch.testing.assert_close(got[real], expected[real], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", list(CONFIGS))
def test_gradients_match_eager(models, family):
    eager, ours = models[family]
    ids, attention_mask = _batch(seed=1)
    real = attention_mask.bool()
    grads = []
    for model in (eager, ours):
        model.train()  # the configs' attention dropout is 0, so training mode is allowed
        model.zero_grad()
        logits = model(ids, attention_mask=attention_mask).logits
        logits[real].log_softmax(-1)[:, :7].sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        model.eval()
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for name, expected in grads[0].items():
        torch.testing.assert_close(grads[1][name], expected, atol=2e-4, rtol=1e-3, msg=name)


@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_packed_sequences_through_position_ids(models, family, monkeypatch):
    eager, ours = models[family]
    ids, _ = _batch(seed=2)
    position_ids = torch.tensor([list(range(7)) + list(range(5)) + list(range(4))] * 2)
    seen = _calls(monkeypatch)
    with torch.no_grad():
        expected = eager(ids, position_ids=position_ids, use_cache=False).logits
        got = ours(ids, position_ids=position_ids, use_cache=False).logits
        unpacked = ours(ids, use_cache=False).logits
    assert seen and all(s.documents for s in seen[:2])
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    # a packed sequence after the first sees none of it: its logits differ from the unpacked run's
    assert (got[:, 7:] - unpacked[:, 7:]).abs().max() > 1e-3


def test_encoder_with_right_padding_matches_eager(monkeypatch):
    """A bidirectional encoder (BERT): no causal clause, the padding as key ranges."""
    if not getattr(transformers.BertPreTrainedModel, "_supports_attention_backend", False):
        pytest.skip(f"BERT of transformers {transformers.__version__} does not use the attention interface")
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, initializer_range=0.3, hidden_dropout_prob=0.0,
                                     attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    eager = transformers.AutoModel.from_config(copy.deepcopy(config), attn_implementation="eager").eval()
    ours = transformers.AutoModel.from_config(copy.deepcopy(config), attn_implementation="attnc").eval()
    ours.load_state_dict(eager.state_dict())
    ids, attention_mask = _batch(seed=7)
    attention_mask = attention_mask.flip(-1)  # the first sequence padded on the right
    seen = _calls(monkeypatch)
    with torch.no_grad():
        expected = eager(ids, attention_mask=attention_mask).last_hidden_state
        got = ours(ids, attention_mask=attention_mask).last_hidden_state
    assert seen == [MaskStructure(padding="range")] * 2
    real = attention_mask.bool()
    torch.testing.assert_close(got[real], expected[real], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(("family", "cache"), [("mistral", None), ("gemma2", None), ("llama", "static")])
def test_greedy_generation_matches_eager(models, family, cache):
    """Decoding: query and key offsets from the cache, the window's cache dropping old keys, masks made in
    advance by `generate` for a static cache."""
    ids, attention_mask = _batch(seed=5)
    ids, attention_mask = ids[:, :8], attention_mask[:, :8]
    extra = {} if cache is None else {"cache_implementation": cache}
    runs = [model.generate(ids, attention_mask=attention_mask, max_new_tokens=6, do_sample=False, pad_token_id=0,
                           output_scores=True, return_dict_in_generate=True, **extra) for model in models[family]]
    assert torch.equal(runs[0].sequences, runs[1].sequences)
    torch.testing.assert_close(torch.stack(runs[1].scores), torch.stack(runs[0].scores), atol=1e-4, rtol=1e-4)


def test_new_batches_reuse_the_traced_variants(models):
    _, ours = models["mistral"]
    ids, attention_mask = _batch()
    with torch.no_grad():
        ours(ids, attention_mask=attention_mask)
        traced = {key: variant._attention.traced for key, variant in IMPLEMENTATION._variants.items()}
        attention_mask[1, :3] = 0  # other padding, another batch size, another length: runtime values only
        ours(ids[:, 1:], attention_mask=attention_mask[:, 1:])
        ours(ids[:1], attention_mask=attention_mask[:1])
    assert {key: variant._attention.traced for key, variant in IMPLEMENTATION._variants.items()
            if key in traced} == traced


def test_triton_backend_matches_eager(models):
    """One tiny model through the generated Triton kernels (the interpreter on CPU), forward and backward."""
    eager, ours = models["gemma2"]
    _install("attnc", attnc_hf.TransformersAttention(backend="triton"))
    ids, attention_mask = _batch(seed=3)
    ids, attention_mask = ids[:, :12], attention_mask[:, :12]
    real = attention_mask.bool()
    outputs = []
    for model in (eager, ours):
        model.zero_grad()
        logits = model(ids, attention_mask=attention_mask).logits
        logits[real][:, :7].sum().backward()
        embedding_grad = model.get_input_embeddings().weight.grad.clone()
        outputs.append((logits.detach()[real], embedding_grad))
    torch.testing.assert_close(outputs[1][0], outputs[0][0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(outputs[1][1], outputs[0][1], atol=2e-4, rtol=1e-3)


# ---- the mask function against transformers' own dense masks ------------------------------------------------


def _dense_attention(query, key, value, allowed, scale):
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    scores = (query @ key.transpose(-1, -2) * scale).masked_fill(~allowed, float("-inf"))
    weights = torch.nan_to_num(scores.softmax(-1))  # rows without keys: zero, as attnc
    return (weights @ value).transpose(1, 2)


def _qkv(batch: int, q_length: int, kv_length: int):
    generator = torch.Generator().manual_seed(q_length * 100 + kv_length)
    return (torch.randn(batch, 4, q_length, 8, generator=generator),
            torch.randn(batch, 2, kv_length, 8, generator=generator),
            torch.randn(batch, 2, kv_length, 8, generator=generator))


def _padding(kind: str, batch: int, length: int) -> torch.Tensor | None:
    if kind == "none":
        return None
    mask = torch.ones(batch, length, dtype=torch.bool)
    if kind == "left":
        mask[0, :4] = False
    elif kind == "right":
        mask[1, -3:] = False
    else:  # holes: no single run per row
        mask[0, 2] = mask[1, 5] = False
    return mask


def _function(name: str):
    """A mask function of transformers' masking_utils (skips where the installed release lacks it)."""
    if not hasattr(masking_utils, name):
        pytest.skip(f"transformers {transformers.__version__} has no masking_utils.{name}")
    return getattr(masking_utils, name)


_FUNCTIONS = {
    "causal": lambda: _function("causal_mask_function"),
    "sliding": lambda: _function("sliding_window_causal_mask_function")(3),
    "bidirectional": lambda: _function("bidirectional_mask_function"),
    "bidirectional_sliding": lambda: _function("sliding_window_bidirectional_mask_function")(2),
    "chunked": lambda: _function("chunked_causal_mask_function")(4, torch.tensor([0, 3])),
    "custom_or": lambda: _function("or_masks")(masking_utils.causal_mask_function, lambda b, h, q, kv: kv < 2),
}
_EXPECTED_STRUCTURE = {"causal": "causal", "sliding": "window", "bidirectional": None,
                       "bidirectional_sliding": "bidirectional_window", "chunked": "chunked", "custom_or": "dense"}


def _mask_arguments(batch_size: int, q_length: int, q_offset: int, kv_length: int, kv_offset: int, **rest) -> dict:
    """The mask interface's arguments in the form of the installed release: `q_length` / `q_offset` (5.x) or
    the query positions as `cache_position` (4.5x)."""
    arguments = dict(batch_size=batch_size, kv_length=kv_length, kv_offset=kv_offset, **rest)
    if "q_length" in inspect.signature(masking_utils.sdpa_mask).parameters:
        return {**arguments, "q_length": q_length, "q_offset": q_offset}
    return {**arguments, "cache_position": torch.arange(q_offset, q_offset + q_length)}


@pytest.mark.parametrize("padding", ["none", "left", "right", "holes"])
@pytest.mark.parametrize("function", list(_FUNCTIONS))
@pytest.mark.parametrize("placement", [(10, 0, 10, 0), (3, 7, 10, 0), (2, 9, 6, 5)], ids=["prefill", "decode",
                                                                                          "window_cache"])
def test_mask_function_means_what_transformers_means(function, padding, placement):
    q_length, q_offset, kv_length, kv_offset = placement
    arguments = _mask_arguments(2, q_length, q_offset, kv_length, kv_offset, mask_function=_FUNCTIONS[function](),
                                attention_mask=_padding(padding, 2, kv_offset + kv_length),
                                use_vmap=function == "custom_or")
    ours = attnc_hf.TransformersAttention.mask(**arguments)
    expected = masking_utils.sdpa_mask(**arguments, allow_is_causal_skip=False, allow_is_bidirectional_skip=False)
    expected = torch.ones(2, 1, q_length, kv_length, dtype=torch.bool) if expected is None else expected
    flag = _EXPECTED_STRUCTURE[function]
    if flag == "dense":
        assert ours.structure.dense == "bool"
    else:
        assert ours.structure.dense is None and (flag is None or getattr(ours.structure, flag))
        if placement[3] == 0:  # with a key offset, the padding may lie before the keys of the call
            assert ours.structure.padding == {"none": None, "holes": "table"}.get(padding, "range")
    query, key, value = _qkv(2, q_length, kv_length)
    got, weights = IMPLEMENTATION(torch.nn.Module(), query, key, value, ours, scaling=0.4)
    assert weights is None and got.shape == (2, q_length, 4, 8)
    torch.testing.assert_close(got, _dense_attention(query, key, value, expected, 0.4), atol=1e-5, rtol=1e-5)


def test_packed_composition_is_read_as_documents():
    position_ids = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3, 4]])
    documents = masking_utils.find_packed_sequence_indices(position_ids)
    function = masking_utils.and_masks(
        _function("remap_positions_for_packed_sequence")(masking_utils.sliding_window_causal_mask_function(2),
                                                         position_ids),
        masking_utils.packed_sequence_mask_function(documents))
    arguments = _mask_arguments(1, 10, 0, 10, 0, mask_function=function, attention_mask=None)
    ours = attnc_hf.TransformersAttention.mask(**arguments)
    assert ours.structure == MaskStructure(causal=True, window=True, documents=True)
    expected = masking_utils.sdpa_mask(**arguments, allow_is_causal_skip=False)
    query, key, value = _qkv(1, 10, 10)
    got, _ = IMPLEMENTATION(torch.nn.Module(), query, key, value, ours, scaling=0.3)
    torch.testing.assert_close(got, _dense_attention(query, key, value, expected, 0.3), atol=1e-5, rtol=1e-5)


# ---- masks that do not come from the mask function ----------------------------------------------------------


def test_tensor_masks_boolean_and_additive():
    query, key, value = _qkv(2, 6, 9)
    allowed = torch.rand(2, 1, 6, 9, generator=torch.Generator().manual_seed(4)) > 0.4
    allowed[1, 0, 2] = False  # a row without keys: zero, not NaN
    got, _ = IMPLEMENTATION(torch.nn.Module(), query, key, value, allowed, scaling=0.5)
    expected = _dense_attention(query, key, value, allowed, 0.5)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert not got.isnan().any() and got[1, 2].abs().max() == 0
    additive = torch.where(allowed, torch.zeros(()), torch.finfo(torch.float32).min)
    got, _ = IMPLEMENTATION(torch.nn.Module(), query, key, value, additive, scaling=0.5)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_no_mask_is_causal_as_the_module_says():
    query, key, value = _qkv(1, 3, 7)
    causal = torch.arange(7)[None, :] <= torch.arange(3)[:, None] + 4  # last query on last key
    got, _ = IMPLEMENTATION(torch.nn.Module(), query, key, value, None, scaling=0.3)
    torch.testing.assert_close(got, _dense_attention(query, key, value, causal, 0.3), atol=1e-5, rtol=1e-5)
    got, _ = IMPLEMENTATION(torch.nn.Module(), query, key, value, None, scaling=0.3, is_causal=False)
    everything = torch.ones(3, 7, dtype=torch.bool)
    torch.testing.assert_close(got, _dense_attention(query, key, value, everything, 0.3), atol=1e-5, rtol=1e-5)


def test_triton_kernels_read_tables_documents_and_dense_biases():
    """The clauses that read tensors, through the generated kernels: a padding table, packed documents, a dense
    additive mask with a per-head bias."""
    triton = attnc_hf.TransformersAttention(backend="triton")
    query, key, value = _qkv(2, 10, 10)
    holes = _mask_arguments(2, 10, 0, 10, 0, mask_function=masking_utils.causal_mask_function,
                            attention_mask=_padding("holes", 2, 10))
    documents = masking_utils.find_packed_sequence_indices(torch.tensor([[0, 1, 2, 3, 0, 1, 2, 0, 1, 2]] * 2))
    packed = _mask_arguments(2, 10, 0, 10, 0, attention_mask=None, mask_function=masking_utils.and_masks(
        masking_utils.causal_mask_function, masking_utils.packed_sequence_mask_function(documents)))
    for arguments, structure in ((holes, MaskStructure(causal=True, padding="table")),
                                 (packed, MaskStructure(causal=True, documents=True))):
        mask = attnc_hf.TransformersAttention.mask(**arguments)
        assert mask.structure == structure
        expected = masking_utils.sdpa_mask(**arguments, allow_is_causal_skip=False)
        got, _ = triton(torch.nn.Module(), query, key, value, mask, scaling=0.4)
        torch.testing.assert_close(got, _dense_attention(query, key, value, expected, 0.4), atol=1e-5, rtol=1e-5)
    bias = torch.randn(1, 4, 10, 10, generator=torch.Generator().manual_seed(6))
    allowed = torch.arange(10)[None, :] <= torch.arange(10)[:, None]
    additive = torch.where(allowed, bias, torch.finfo(torch.float32).min)
    got, _ = triton(torch.nn.Module(), query, key, value, additive, scaling=0.4, softcap=3.0)
    groups = 2  # query heads per key/value head
    scores = query @ key.repeat_interleave(groups, 1).transpose(-1, -2) * 0.4
    weights = (3.0 * torch.tanh(scores / 3.0) + additive).softmax(-1)
    expected = (weights @ value.repeat_interleave(groups, 1)).transpose(1, 2)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


# ---- refusals -----------------------------------------------------------------------------------------------


def test_register_installs_the_attention_and_the_mask_function():
    registered = attnc_hf.register("attnc_registered", backend="reference")
    assert transformers.AttentionInterface()["attnc_registered"] is registered
    assert masking_utils.AttentionMaskInterface()["attnc_registered"] is attnc_hf.TransformersAttention.mask
    assert registered.backend == "reference"


def test_bad_input_is_refused_by_name():
    query, key, value = _qkv(1, 4, 4)
    module = torch.nn.Module()
    with pytest.raises(ValueError, match=r"attnc: dropout=0\.1"):
        IMPLEMENTATION(module, query, key, value, None, dropout=0.1)
    with pytest.raises(ValueError, match="attnc: the s_aux argument"):
        IMPLEMENTATION(module, query, key, value, None, s_aux=torch.zeros(4))
    with pytest.raises(TypeError, match="attnc: attention_mask must be"):
        IMPLEMENTATION(module, query, key, value, "causal")
    with pytest.raises(ValueError, match="attnc: attention_mask as a tensor must be 4-D"):
        IMPLEMENTATION(module, query, key, value, torch.ones(1, 4, dtype=torch.bool))
    made = attnc_hf.TransformersAttention.mask(**_mask_arguments(1, 6, 0, 6, 0))
    with pytest.raises(ValueError, match="attnc: attention_mask was made for batch 1, 6 queries"):
        IMPLEMENTATION(module, query, key, value, made)
    with pytest.raises(ValueError, match="attnc: backend must be one of"):
        attnc_hf.register(backend="cuda")
    with pytest.raises(ValueError, match="attnc: name must be"):
        attnc_hf.register("kernels-community/attnc")


@pytest.mark.filterwarnings("ignore:attnc. backend='auto' on cpu")  # the snippet's default backend says so
def test_documentation_snippet_runs():
    text = (ROOT / "docs" / "transformers.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "docs/transformers.md has no python block"
    for code in blocks:
        exec(compile(code, "docs/transformers.md", "exec"), {"__name__": "docs"})
