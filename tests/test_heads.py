"""Attention heads as pruning units, and the exact speedup of transformers.

Every form of attention (Hugging Face BERT, RoBERTa, ViT, GPT-2; torchvision's ViT and
nn.MultiheadAttention through SplitMultiheadAttention; hand-written modules that split heads
before F.scaled_dot_product_attention or a matmul-softmax) must give one prunable unit
per head, lose half its heads and FFN neurons under a channel pruner, and compute after
ModelSpeedup what the masked model computed, also on inputs of other shapes with padding.
"""

from __future__ import annotations

import copy
import json
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from secateurs import L1NormPruner, ModelSpeedup, count_flops_params, load_pruned_model, save_pruned_model
from secateurs.graph import trace_channels
from secateurs.layers import SplitMultiheadAttention, split_multihead_attention

transformers = pytest.importorskip("transformers")
TOLERANCE = 1e-4


def randomise(model: nn.Module) -> nn.Module:
    """Random LayerNorm affine parameters and no (near-)zero tensor, so a leak shows."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm) and m.weight is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) * 2 - 1)
        for name, p in model.named_parameters():
            if p.is_floating_point() and float(p.abs().max()) < 1e-3:
                p.copy_(torch.rand(p.shape, generator=g) * 0.2 - 0.1 if name.endswith("bias")
                        else torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def _tokens(batch: int, length: int, pad: int = 0, start: int = 2) -> dict:
    mask = torch.ones(batch, length, dtype=torch.long)
    if pad:
        mask[-1, -pad:] = 0
    return {"input_ids": torch.randint(start, 50, (batch, length)), "attention_mask": mask}


class HandAttention(nn.Module):
    """One transformer block written by hand: q/k/v split into heads by view, attention by
    F.scaled_dot_product_attention ("sdpa") or q @ k^T -> softmax -> @ v ("matmul"); with
    fewer k/v heads than q heads (grouped-query attention) repeated by ``expand``,
    ``repeat_interleave`` or sdpa's ``enable_gqa``."""

    def __init__(self, mode: str = "sdpa", heads: int = 4, kv_heads: int = 4, head_dim: int = 8, dim: int = 24):
        super().__init__()
        self.mode, self.heads, self.kv_heads, self.head_dim = mode, heads, kv_heads, head_dim
        self.q = nn.Linear(dim, heads * head_dim)
        self.k, self.v = nn.Linear(dim, kv_heads * head_dim), nn.Linear(dim, kv_heads * head_dim)
        self.o = nn.Linear(heads * head_dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, 32), nn.Linear(32, dim)
        self.head = nn.Linear(dim, 3)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = self.k(x).view(b, t, -1, self.head_dim).transpose(1, 2)
        v = self.v(x).view(b, t, -1, self.head_dim).transpose(1, 2)
        rep = self.heads // self.kv_heads
        if self.mode == "expand":
            k = k[:, :, None].expand(b, self.kv_heads, rep, t, self.head_dim).reshape(b, -1, t, self.head_dim)
            v = v[:, :, None].expand(b, self.kv_heads, rep, t, self.head_dim).reshape(b, -1, t, self.head_dim)
        elif self.mode == "interleave":
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        if self.mode == "sdpa":
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.head_dim ** -0.5,
                                               enable_gqa=rep > 1)
        else:
            y = ((q @ k.transpose(-1, -2)) * self.head_dim ** -0.5 + mask).softmax(-1) @ v
        x = self.norm(x + self.o(y.transpose(1, 2).reshape(b, t, -1)))
        return self.head(x + self.fc2(F.relu(self.fc1(x))))


class WithMultiheadAttention(nn.Module):
    """A block around nn.MultiheadAttention (sequence first), with a key padding mask."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(6, 16)
        self.attn = nn.MultiheadAttention(16, 4)
        self.norm = nn.LayerNorm(16)
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        x = self.inp(x)
        x = self.norm(x + self.attn(x, x, x, key_padding_mask=padding)[0])
        return self.head(x + self.fc2(F.gelu(self.fc1(x))))


def _hand_inputs(batch: int, length: int, pad: int = 0) -> tuple:
    mask = torch.zeros(batch, 1, 1, length)
    if pad:
        mask[-1, ..., -pad:] = float("-inf")
    return torch.randn(batch, length, 24), mask


def _mha_inputs(batch: int, length: int, pad: int = 0) -> tuple:
    padding = torch.zeros(batch, length, dtype=torch.bool)
    if pad:
        padding[-1, -pad:] = True
    return torch.randn(length, batch, 6), padding


def _bert():
    config = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, attn_implementation="eager")
    return transformers.BertModel(config)


def _bert_sdpa():
    config = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, attn_implementation="sdpa")
    return transformers.BertModel(config)


def _roberta():
    config = transformers.RobertaConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                        intermediate_size=64, max_position_embeddings=40)
    return transformers.RobertaModel(config)


def _vit():
    config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=4, intermediate_size=64)
    return transformers.ViTModel(config)


def _gpt2():
    config = transformers.GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=4, n_positions=16, bos_token_id=0,
                                     eos_token_id=0)
    return transformers.GPT2Model(config)


def _torchvision_vit():
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4,
                                                 hidden_dim=32, mlp_dim=64)
    return split_multihead_attention(model)


@dataclass
class Form:
    """One form of attention: how to build it, its inputs, its pruned layer type, where its
    first attention module is, its q projection, and the attribute holding its head count."""

    id: str
    factory: Callable[[], nn.Module]
    inputs: Callable[[int, int, int], Any]  # (batch, length, padded positions) -> example
    op_type: str
    attention: Callable[[nn.Module], nn.Module]
    q_proj: Callable[[nn.Module], nn.Module]
    heads_attr: str
    head_dim: int = 8
    heads: int = 4


def _bert_attention(m):
    return m.encoder.layer[0].attention.self


FORMS = [
    Form("bert", _bert, lambda b, t, p: _tokens(b, t, p), "Linear", _bert_attention,
         lambda m: _bert_attention(m).query, "num_attention_heads"),
    Form("bert_sdpa", _bert_sdpa, lambda b, t, p: _tokens(b, t, p), "Linear", _bert_attention,
         lambda m: _bert_attention(m).query, "num_attention_heads"),
    Form("roberta", _roberta, lambda b, t, p: _tokens(b, t, p), "Linear", _bert_attention,
         lambda m: _bert_attention(m).query, "num_attention_heads"),
    Form("vit", _vit, lambda b, t, p: {"pixel_values": torch.randn(b, 3, 32, 32)}, "Linear",
         lambda m: m.layers[0].attention, lambda m: m.layers[0].attention.q_proj, "num_attention_heads"),
    Form("gpt2", _gpt2, lambda b, t, p: {**_tokens(b, t, p, start=0), "use_cache": False}, "Conv1D",
         lambda m: m.h[0].attn, lambda m: m.h[0].attn.c_attn, "num_heads"),
    Form("torchvision_vit", _torchvision_vit, lambda b, t, p: torch.randn(b, 3, 32, 32), "Linear",
         lambda m: m.encoder.layers[0].self_attention, lambda m: m.encoder.layers[0].self_attention.q_proj,
         "num_heads"),
    Form("multihead_attention", lambda: split_multihead_attention(WithMultiheadAttention()), _mha_inputs, "Linear",
         lambda m: m.attn, lambda m: m.attn.q_proj, "num_heads", head_dim=4),
    Form("hand_sdpa", lambda: HandAttention("sdpa"), _hand_inputs, "Linear", lambda m: m, lambda m: m.q, "heads"),
    Form("hand_matmul", lambda: HandAttention("matmul"), _hand_inputs, "Linear", lambda m: m, lambda m: m.q,
         "heads"),
]
BY_ID = {f.id: f for f in FORMS}


def call(model: nn.Module, example: Any) -> Any:
    with torch.no_grad():
        if isinstance(example, dict):
            return model(**example)
        return model(*example) if isinstance(example, tuple) else model(example)


def first(out: Any) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out[0]


def assert_close(out: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    assert out.shape == expected.shape, what
    scale = float(expected.abs().max())
    assert scale > 0, f"{what}: the masked model outputs only zeros"
    assert float((out - expected).abs().max()) <= TOLERANCE * scale, what


def build(form: Form) -> nn.Module:
    torch.manual_seed(0)
    return randomise(form.factory())


def _q_rows(form: Form, model: nn.Module) -> int:
    q = form.q_proj(model)
    return q.nf if form.op_type == "Conv1D" else q.out_features


@pytest.mark.parametrize("form", FORMS, ids=lambda f: f.id)
def test_each_head_is_one_prunable_unit_of_its_head_dim_rows(form):
    model = build(form)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = trace_channels(model, form.inputs(2, 5, 1))
    name = {m: n for n, m in model.named_modules()}[form.q_proj(model)]
    ids = graph.modules[name].out_ids
    comps = graph.component[ids]
    rows = comps.numel()
    # GPT-2's c_attn holds q, k and v: three blocks of the same heads
    per_head = comps.view(rows // (form.heads * form.head_dim), form.heads, form.head_dim)
    assert bool((per_head == per_head[..., :1]).all()), "a head's rows are split over several units"
    assert bool((per_head == per_head[:1]).all()), "q, k and v rows of one head are separate units"
    assert per_head[0, :, 0].unique().numel() == form.heads
    assert not bool(graph.fixed[comps].any()), graph.why_fixed(ids)
    assert any(h.heads == form.heads and h.head_dim == form.head_dim for h in graph.heads)


@pytest.mark.parametrize("form", FORMS, ids=lambda f: f.id)
def test_half_the_heads_and_ffn_neurons_go_exactly(form):
    model = build(form)
    example = form.inputs(2, 5, 1)
    macs, params, _ = count_flops_params(model, example)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the residual stream stays whole, which the pruner reports
        _, masks = L1NormPruner(model, [{"op_types": [form.op_type], "sparse_ratio": 0.5}],
                                dummy_input=example).compress()
    name = {m: n for n, m in model.named_modules()}[form.q_proj(model)]
    row_dim = 1 if form.op_type == "Conv1D" else 0
    kept_rows = masks[name]["weight"].movedim(row_dim, 0).any(1)
    per_head = kept_rows.view(-1, form.heads, form.head_dim)
    assert bool((per_head == per_head[..., :1]).all()), "rows of a head were pruned apart"
    assert int(per_head[0, :, 0].sum()) == form.heads // 2
    masked = copy.deepcopy(model)
    expected = call(model, example)
    other = form.inputs(3, 7, 3)  # another batch size and length, with padding
    expected_other = call(masked, other)
    ModelSpeedup(model, example, masks).speedup_model()
    assert_close(first(call(model, example)), first(expected), form.id)
    assert_close(first(call(model, other)), first(expected_other), f"{form.id} on another input")
    attention = form.attention(model)
    assert getattr(attention, form.heads_attr) == form.heads // 2
    assert _q_rows(form, model) * 2 == _q_rows(form, build(form))
    new_macs, new_params, _ = count_flops_params(model, example)
    assert new_params < params and new_macs < macs


def test_hugging_face_widths_follow_and_the_shared_config_tells_the_sizes_it_can_express():
    model = build(BY_ID["bert"])
    example = _tokens(2, 5, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, masks = L1NormPruner(model, [{"op_types": ["Linear"], "sparse_ratio": 0.5}], dummy_input=example).compress()
    ModelSpeedup(model, example, masks).speedup_model()
    attention = model.encoder.layer[0].attention.self
    assert (attention.num_attention_heads, attention.attention_head_size, attention.all_head_size) == (2, 8, 16)
    assert model.encoder.layer[0].intermediate.dense.out_features == 32
    assert attention.config is model.config
    # Every layer now has 32 FFN neurons: the shared config says so, and builds those shapes. BERT's config
    # cannot say "2 heads of 8" at hidden size 32 (it derives the head width), so the heads are recorded.
    assert (model.config.num_attention_heads, model.config.intermediate_size) == (4, 32)
    assert model.config.secateurs_sizes == {"num_attention_heads": {f"encoder.layer.{i}.attention.self": 2
                                                                    for i in range(2)}}
    fresh = type(model)(copy.deepcopy(model.config))
    assert fresh.encoder.layer[1].intermediate.dense.weight.shape == model.encoder.layer[1].intermediate.dense.weight.shape


def test_sizes_the_layers_disagree_on_are_recorded_per_layer_in_the_config(tmp_path):
    model = build(BY_ID["bert"])
    example = _tokens(2, 5, 1)
    layer0 = [f"encoder.layer.0.attention.self.{p}" for p in ("query", "key", "value")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, masks = L1NormPruner(model, [{"op_names": layer0 + ["encoder.layer.1.intermediate.dense"],
                                         "sparse_ratio": 0.5}], dummy_input=example).compress()
        speedup = ModelSpeedup(model, example, masks)
        speedup.speedup_model()
    record = {"num_attention_heads": {"encoder.layer.0.attention.self": 2, "encoder.layer.1.attention.self": 4},
              "intermediate_size": {"encoder.layer.0.intermediate.dense": 64, "encoder.layer.1.intermediate.dense": 32}}
    assert (model.config.num_attention_heads, model.config.intermediate_size) == (4, 64)  # the dense values stay
    assert model.config.secateurs_sizes == record == speedup.report.config["secateurs_sizes"]
    assert json.loads(model.config.to_json_string())["secateurs_sizes"] == record  # save_pretrained writes it
    # A fresh model from the original config loads the file: per-layer sizes, record and outputs.
    save_pruned_model(model, tmp_path / "bert.safetensors")
    fresh = load_pruned_model(build(BY_ID["bert"]), tmp_path / "bert.safetensors").eval()
    assert fresh.encoder.layer[0].attention.self.num_attention_heads == 2
    assert fresh.encoder.layer[1].attention.self.num_attention_heads == 4
    assert fresh.config.secateurs_sizes == record
    other = _tokens(3, 6, 2)
    with torch.no_grad():
        assert torch.allclose(fresh(**other).last_hidden_state, model.eval()(**other).last_hidden_state, atol=1e-6)


def test_gpt2_split_size_follows_and_embed_dim_stays():
    model = build(BY_ID["gpt2"])
    example = {**_tokens(2, 5, 1, start=0), "use_cache": False}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, masks = L1NormPruner(model, [{"op_types": ["Conv1D"], "sparse_ratio": 0.5}], dummy_input=example).compress()
    ModelSpeedup(model, example, masks).speedup_model()
    attention = model.h[0].attn
    assert (attention.num_heads, attention.head_dim, attention.split_size, attention.embed_dim) == (2, 8, 16, 32)
    assert attention.c_attn.nf == 48 and attention.c_proj.nx == 16


@pytest.mark.parametrize("mode", ["expand", "interleave", "sdpa"])
def test_grouped_query_attention_prunes_whole_key_value_groups(mode):
    torch.manual_seed(0)
    model = randomise(HandAttention(mode, heads=6, kv_heads=2, head_dim=8))
    example = _hand_inputs(2, 5, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, masks = L1NormPruner(model, [{"op_types": ["Linear"], "sparse_ratio": 0.5}], dummy_input=example).compress()
    expected = call(model, example)
    ModelSpeedup(model, example, masks).speedup_model()
    # one k/v head and the three q heads it serves are one unit: half of two groups is one
    assert (model.heads, model.kv_heads) == (3, 1)
    assert (model.q.out_features, model.k.out_features, model.o.in_features) == (24, 8, 24)
    assert_close(call(model, example), expected, mode)


def test_grouped_query_attention_with_ambiguous_attributes_is_refused():
    class Ambiguous(HandAttention):
        """4 q heads, 2 k/v heads: 2 q heads per group, read as ``self.group``."""

        def __init__(self):
            super().__init__("interleave", heads=4, kv_heads=2)
            self.group = 2

        def forward(self, x, mask):
            self.heads = self.kv_heads * self.group
            return super().forward(x, mask)

    model = Ambiguous().eval()
    graph = trace_channels(model, _hand_inputs(2, 5), warn=False)
    ids = graph.modules["q"].out_ids
    assert bool(graph.fixed[graph.component[ids]].all())
    assert any("cannot be told apart" in r for r in graph.why_fixed(ids))


class Mixing(nn.Module):
    """Heads split by view, then mixed in one of several ways that must keep them."""

    def __init__(self, how: str):
        super().__init__()
        self.how, self.heads, self.head_dim = how, 4, 6
        self.q, self.o = nn.Linear(24, 24), nn.Linear(24, 24)

    def forward(self, x):
        b, t, _ = x.shape
        q = self.q(x).view(b, t, -1, self.head_dim).transpose(1, 2)  # (b, heads, t, head_dim)
        if self.how == "softmax_over_heads":
            y = (q @ q.transpose(-1, -2)).softmax(1) @ q
        elif self.how == "sum_over_heads":
            y = (q @ q.transpose(-1, -2)).softmax(-1) @ q
            y = y + y.sum(1, keepdim=True)
        elif self.how == "per_head_constant":
            y = (q @ q.transpose(-1, -2) + torch.ones(b, 4, t, t)).softmax(-1) @ q
        elif self.how == "not_attention":
            y = q.relu()
        else:  # "literal": a head count written in the code
            q = self.q(x).view(b, t, 4, self.head_dim).transpose(1, 2)
            y = (q @ q.transpose(-1, -2)).softmax(-1) @ q
        return self.o(y.transpose(1, 2).reshape(b, t, -1))


@pytest.mark.parametrize("how, reason", [
    ("softmax_over_heads", "normalises over channels"),
    ("sum_over_heads", "reduces over channels"),
    ("per_head_constant", "carries no channel variables"),
    ("not_attention", "no attention product uses as heads"),
    ("literal", "does not hold as an attribute"),
])
def test_ops_that_mix_heads_keep_them_with_a_reason(how, reason):
    model = Mixing(how).eval()
    if how == "literal":
        model.heads = 3  # no attribute holds the 4 written in the code
    graph = trace_channels(model, torch.randn(2, 5, 24), warn=False)
    ids = graph.modules["q"].out_ids
    assert bool(graph.fixed[graph.component[ids]].all())
    assert any(reason in r for r in graph.why_fixed(ids)), graph.why_fixed(ids)


def test_a_layer_whose_heads_are_all_masked_keeps_one_zero_head():
    torch.manual_seed(0)
    model = randomise(HandAttention("sdpa"))
    example = _hand_inputs(2, 5, 1)
    masks = {n: {"weight": torch.zeros_like(getattr(model, n).weight, dtype=torch.bool),
                 "bias": torch.zeros_like(getattr(model, n).bias, dtype=torch.bool)} for n in ("q", "k", "v")}
    masked = copy.deepcopy(model)
    with torch.no_grad():
        for n in ("q", "k", "v"):
            getattr(masked, n).weight.zero_()
            getattr(masked, n).bias.zero_()
    expected = call(masked, example)
    speedup = ModelSpeedup(model, example, masks)
    with pytest.warns(UserWarning, match="one masked attention head kept"):
        speedup.speedup_model()
    assert model.heads == 1 and model.q.out_features == 8
    assert_close(call(model, example), expected, "all heads masked")


class ReturnsWeights(nn.Module):
    def __init__(self, average: bool):
        super().__init__()
        self.average = average
        self.attn = SplitMultiheadAttention(16, 4, batch_first=True)

    def forward(self, x):
        out, weights = self.attn(x, x, x, average_attn_weights=self.average)
        return out, weights


def test_attention_weights_averaged_over_heads_keep_the_heads_only_when_used():
    x = torch.randn(2, 5, 16)
    graph = trace_channels(ReturnsWeights(average=True).eval(), x, warn=False)
    ids = graph.modules["attn.q_proj"].out_ids
    assert bool(graph.fixed[graph.component[ids]].all())
    assert any("reduces over channels" in r for r in graph.why_fixed(ids))
    model = WithMultiheadAttention()
    split_multihead_attention(model)  # its forward throws the (averaged) weights away
    graph = trace_channels(model.eval(), _mha_inputs(2, 5), warn=False)
    ids = graph.modules["attn.q_proj"].out_ids
    assert not bool(graph.fixed[graph.component[ids]].any())


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kdim", [None, 6])
def test_split_multihead_attention_computes_what_nn_multihead_attention_computes(batch_first, bias, kdim):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, bias=bias, kdim=kdim, vdim=kdim, batch_first=batch_first).eval()
    split = SplitMultiheadAttention.from_multihead_attention(mha)
    q, k = torch.randn(3, 5, 8), torch.randn(3, 4, kdim or 8)
    if not batch_first:
        q, k = q.transpose(0, 1), k.transpose(0, 1)
    padding = torch.tensor([[False] * 4, [False] * 3 + [True], [False] * 2 + [True] * 2])
    for kwargs in ({}, {"key_padding_mask": padding}, {"attn_mask": torch.randn(5, 4)},
                   {"attn_mask": torch.randn(6, 5, 4)}, {"attn_mask": torch.rand(5, 4) > 0.7},
                   {"need_weights": False}, {"average_attn_weights": False}):
        with torch.no_grad():
            out, weights = mha(q, k, k, **kwargs)
            new_out, new_weights = split(q, k, k, **kwargs)
        assert torch.allclose(new_out, out, atol=1e-5, equal_nan=True), kwargs  # a row with no key is NaN in both
        assert (weights is None) == (new_weights is None)
        assert weights is None or torch.allclose(new_weights, weights, atol=1e-6, equal_nan=True), kwargs
    unbatched = (q[0], k[0], k[0]) if batch_first else (q[:, 0], k[:, 0], k[:, 0])
    with torch.no_grad():
        out, weights = mha(*unbatched, key_padding_mask=padding[1])
        new_out, new_weights = split(*unbatched, key_padding_mask=padding[1])
    assert torch.allclose(new_out, out, atol=1e-5) and torch.allclose(new_weights, weights, atol=1e-6)


def test_split_multihead_attention_refuses_what_it_does_not_compute():
    with pytest.raises(ValueError, match="add_bias_kv"):
        SplitMultiheadAttention.from_multihead_attention(nn.MultiheadAttention(8, 2, add_bias_kv=True))


def test_plain_nn_multihead_attention_keeps_its_heads_and_says_how_to_prune_them():
    model = WithMultiheadAttention().eval()
    graph = trace_channels(model, _mha_inputs(2, 5), warn=False)
    ids = graph.modules["attn"].out_ids
    assert any("split_multihead_attention" in r for r in graph.why_fixed(ids))


@pytest.mark.parametrize("form_id", ["gpt2", "torchvision_vit"])
def test_a_saved_pruned_model_loads_into_a_fresh_one_with_its_head_counts(form_id, tmp_path):
    from secateurs.speedup import load_pruned_model, save_pruned_model

    form = BY_ID[form_id]
    model = build(form)
    example = form.inputs(2, 5, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, masks = L1NormPruner(model, [{"op_types": [form.op_type], "sparse_ratio": 0.5}],
                                dummy_input=example).compress()
    ModelSpeedup(model, example, masks).speedup_model()
    save_pruned_model(model, tmp_path / "pruned.safetensors")
    fresh = load_pruned_model(build(form), tmp_path / "pruned.safetensors").eval()
    assert getattr(form.attention(fresh), form.heads_attr) == form.heads // 2
    other = form.inputs(3, 6, 2)
    assert_close(first(call(fresh, other)), first(call(model, other)), form_id)


@pytest.mark.parametrize("heads, kv_heads, pruned", [(6, 2, True), (4, 2, False)])
def test_llama_grouped_query_attention_loses_whole_groups_or_keeps_them(heads, kv_heads, pruned):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=50, hidden_size=48, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=8,
                                      max_position_embeddings=32)
    model = randomise(transformers.LlamaModel(config))
    example = {**_tokens(2, 6, 2, start=0), "use_cache": False}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, masks = L1NormPruner(model, [{"op_types": ["Linear"], "sparse_ratio": 0.5}], dummy_input=example).compress()
    expected = call(model, example)[0]
    ModelSpeedup(model, example, masks).speedup_model()
    attention = model.layers[0].self_attn
    assert attention.num_key_value_groups == heads // kv_heads
    assert attention.k_proj.out_features == (8 * kv_heads // 2 if pruned else 8 * kv_heads)
    assert attention.q_proj.out_features == (8 * heads // 2 if pruned else 8 * heads)
    assert model.layers[0].mlp.gate_proj.out_features == 32
    assert_close(call(model, example)[0], expected, "llama")


def test_t5_heads_go_and_an_attribute_that_only_shares_their_width_stays():
    torch.manual_seed(0)
    # 32 relative-position buckets: the same number as the width of all heads (4 x 8)
    config = transformers.T5Config(vocab_size=50, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                   relative_attention_num_buckets=32)
    model = randomise(transformers.T5EncoderModel(config))
    example = _tokens(2, 7, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, masks = L1NormPruner(model, [{"op_types": ["Linear"], "sparse_ratio": 0.5}], dummy_input=example).compress()
    masked = copy.deepcopy(model)
    ModelSpeedup(model, example, masks).speedup_model()
    attention = model.encoder.block[0].layer[0].SelfAttention
    assert (attention.n_heads, attention.relative_attention_num_buckets, attention.q.out_features) == (2, 32, 16)
    other = _tokens(3, 5, 1)
    assert_close(call(model, other)[0], call(masked, other)[0], "t5")
