"""ModelSpeedup and dependency-aware pruning on known cases: the shrunk model computes
exactly what the masked model computed."""

import dataclasses

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from secateurs import (
    FPGMPruner,
    L1NormPruner,
    ModelSpeedup,
    attach_masks,
    count_flops_params,
    get_masks,
    load_pruned_model,
    save_pruned_model,
)


def _randomise_bn(model):
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats:
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 2 - 1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) * 2 - 1)
    return model


def prune_and_speedup(model, x, config, pruner=L1NormPruner):
    torch.manual_seed(0)
    _randomise_bn(model).eval()
    before = sum(p.numel() for p in model.parameters())
    _, masks = pruner(model, config, dummy_input=x).compress()
    masked = model(*x) if isinstance(x, tuple) else model(**x) if isinstance(x, dict) else model(x)
    speedup = ModelSpeedup(model, x, masks)
    speedup.speedup_model()
    out = model(*x) if isinstance(x, tuple) else model(**x) if isinstance(x, dict) else model(x)
    assert out.shape == masked.shape
    assert torch.allclose(out, masked, rtol=1e-4, atol=1e-5 * masked.abs().max().item())
    assert get_masks(model) == {}
    assert sum(p.numel() for p in model.parameters()) < before
    return model, speedup.report


class ConvBnConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 8, 3, padding=1)

    def forward(self, x):
        return self.conv2(F.relu(self.bn1(self.conv1(x))))


def test_conv_bn_relu_conv_has_no_bn_leak():
    model, _ = prune_and_speedup(ConvBnConv(), torch.randn(2, 3, 8, 8), [{"op_names": ["conv1"], "sparse_ratio": 0.5}])
    assert model.conv1.out_channels == 8 and model.bn1.num_features == 8 and model.conv2.in_channels == 8
    assert model.bn1.bias.abs().min() > 0  # real BN biases, nothing zeroed to hide a leak


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.a, self.bna = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.b, self.bnb = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = F.relu(self.bn0(self.stem(x)))
        y = self.bnb(self.b(F.relu(self.bna(self.a(x)))))
        x = F.relu(x + y)
        return self.head(x.mean((2, 3)))


def test_residual_add_couples_channels_and_prunes_them_together():
    model, _ = prune_and_speedup(Residual(), torch.randn(2, 3, 8, 8), [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}])
    assert model.stem.out_channels == model.b.out_channels == model.head.in_features == 8
    assert model.a.out_channels == 8 and model.head.out_features == 5


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.l, self.r = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(14)
        self.out = nn.Conv2d(14, 4, 1)

    def forward(self, x):
        return self.out(F.relu(self.bn(torch.cat([self.l(x), self.r(x)], dim=1))))


def test_concat_keeps_each_branch_offset():
    model, _ = prune_and_speedup(Concat(), torch.randn(2, 3, 6, 6), [{"op_names": ["l", "r"], "sparse_ratio": 0.5}])
    assert (model.l.out_channels, model.r.out_channels, model.bn.num_features, model.out.in_channels) == (4, 3, 7, 7)


class SplitAlongWidth(nn.Module):
    """A split along a non-channel dim couples nothing."""

    def __init__(self):
        super().__init__()
        self.conv, self.out = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        left, right = self.conv(x).chunk(2, dim=3)
        return self.out(F.relu(left) * torch.sigmoid(right))


def test_split_along_a_spatial_dim_does_not_block_pruning():
    model, _ = prune_and_speedup(SplitAlongWidth(), torch.randn(2, 3, 6, 6), [{"op_names": ["conv"], "sparse_ratio": 0.5}])
    assert model.conv.out_channels == 4


class Depthwise(nn.Module):
    def __init__(self):
        super().__init__()
        self.pw1, self.bn1 = nn.Conv2d(3, 12, 1), nn.BatchNorm2d(12)
        self.dw, self.bn2 = nn.Conv2d(12, 12, 3, padding=1, groups=12), nn.BatchNorm2d(12)
        self.grouped = nn.Conv2d(12, 12, 3, padding=1, groups=3)
        self.pw2 = nn.Conv2d(12, 4, 1)

    def forward(self, x):
        x = F.relu6(self.bn2(self.dw(F.relu6(self.bn1(self.pw1(x))))))
        return self.pw2(self.grouped(x))


def test_a_config_whose_layers_a_grouped_conv_fixes_is_refused_naming_it():
    model, x = Depthwise(), torch.randn(2, 3, 6, 6)
    # pw1 -> dw -> grouped: the grouped conv's input group (pw1, dw) and its own outputs
    # (into pw2, whose outputs are the model's) are unprunable: the config prunes nothing.
    with pytest.raises(ValueError, match="grouped convolution grouped"):
        L1NormPruner(model, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}], dummy_input=x)


class DepthwiseNoGroupedConv(Depthwise):
    def forward(self, x):
        return self.pw2(F.relu6(self.bn2(self.dw(F.relu6(self.bn1(self.pw1(x)))))))


def test_depthwise_conv_shrinks_with_its_input():
    model, _ = prune_and_speedup(DepthwiseNoGroupedConv(), torch.randn(2, 3, 6, 6),
                                 [{"op_names": ["pw1"], "sparse_ratio": 0.5}])
    assert model.pw1.out_channels == model.dw.in_channels == model.dw.out_channels == model.dw.groups == 6


class FlattenLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(1, 6, 3), nn.BatchNorm2d(6)
        self.fc1, self.fc2 = nn.Linear(6 * 4 * 4, 20), nn.Linear(20, 3)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x))).flatten(1)
        return self.fc2(F.relu(self.fc1(x)))


def test_flatten_into_linear_removes_whole_feature_blocks():
    config = [{"op_types": ["Conv2d", "Linear"], "sparse_ratio": 0.5}]
    model, _ = prune_and_speedup(FlattenLinear(), torch.randn(3, 1, 6, 6), config)
    assert model.fc1.in_features == 3 * 16 and model.fc1.out_features == 10
    assert model.fc2.out_features == 3  # the output layer keeps its outputs


def test_frozen_model_is_pruned_and_flags_are_kept():
    model = Residual()
    for p in model.parameters():
        p.requires_grad_(False)
    model, _ = prune_and_speedup(model, torch.randn(2, 3, 8, 8), [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}])
    assert not any(p.requires_grad for p in model.parameters())


def test_train_mode_is_preserved_by_tracing_and_speedup():
    model = _randomise_bn(Residual()).train()
    model.bna.eval()
    x = torch.randn(2, 3, 8, 8)
    stats = model.bn0.running_mean.clone()
    pruner = L1NormPruner(model, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}], dummy_input=x)
    assert model.training and not model.bna.training
    assert torch.equal(model.bn0.running_mean, stats)  # tracing did not update BN statistics
    pruner.compress()
    ModelSpeedup(model, x).speedup_model()
    assert model.training and model.a.training and not model.bna.training


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(6, 8)
        self.out = nn.Linear(8, 2)

    def forward(self, x, y=None):
        return self.out(F.relu(self.a(x) + self.b(y)))


@pytest.mark.parametrize("as_kwargs", [False, True])
def test_multi_input_and_keyword_inputs(as_kwargs):
    x, y = torch.randn(3, 4), torch.randn(3, 6)
    inputs = {"x": x, "y": y} if as_kwargs else (x, y)
    model, _ = prune_and_speedup(TwoInputs(), inputs, [{"op_names": ["a", "b"], "sparse_ratio": 0.5}])
    assert model.a.out_features == model.b.out_features == model.out.in_features == 4


class UnknownOp(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.out = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.out(torch.cumsum(self.conv(x), dim=1))


def test_an_unknown_op_is_named_and_a_config_it_leaves_nothing_to_prune_is_refused():
    x = torch.randn(1, 3, 4, 4)
    with pytest.raises(ValueError, match="cumsum"):
        L1NormPruner(UnknownOp(), [{"op_names": ["conv"], "sparse_ratio": 0.5}], dummy_input=x)


def test_hand_masks_on_part_of_a_residual_group_are_kept_and_the_output_is_the_masked_models():
    # Masking b and bnb silences the residual branch, but the skip connection still carries
    # those channels past them: removing the group would change the output.
    model = _randomise_bn(Residual()).eval()
    x = torch.randn(2, 3, 8, 8)
    mask = torch.ones(16, 16, 3, 3, dtype=torch.bool)
    mask[:4] = False
    masks = {"b": {"weight": mask, "bias": torch.arange(16) >= 4},
             "bnb": {"weight": torch.arange(16) >= 4, "bias": torch.arange(16) >= 4}}
    attach_masks(model, masks)
    with torch.no_grad():
        expected = model(x)
    speedup = ModelSpeedup(model, x, masks)
    with pytest.warns(UserWarning, match="kept some masked channels"):
        speedup.speedup_model()
    assert model.stem.out_channels == 16 and model.b.out_channels == 16
    assert speedup.report.kept and not speedup.report.extended
    assert torch.allclose(model(x), expected, atol=1e-5)


def test_a_silenced_norm_channel_removes_its_producer_when_nothing_else_sees_it():
    model = _randomise_bn(ConvBnConv()).eval()
    x = torch.randn(2, 3, 6, 6)
    keep = torch.arange(16) >= 3
    attach_masks(model, {"bn1": {"weight": keep, "bias": keep}})  # what SlimPruner makes
    with torch.no_grad():
        expected = model(x)
    speedup = ModelSpeedup(model, x)
    speedup.speedup_model()
    assert model.conv1.out_channels == 13 and model.conv2.in_channels == 13 and model.bn1.num_features == 13
    assert any("conv1" in line for line in speedup.report.extended)
    assert torch.allclose(model(x), expected, atol=1e-5)


def test_constant_of_a_removed_channel_is_folded_into_a_linear_consumer():
    model = _randomise_bn(FlattenLinear()).eval()
    x = torch.randn(3, 1, 6, 6)
    mask = torch.ones(6, 1, 3, 3, dtype=torch.bool)
    mask[:2] = False  # only the conv's weights: the BN bias still sends a constant
    attach_masks(model, {"conv": {"weight": mask}})
    expected = model(x)
    speedup = ModelSpeedup(model, x)
    speedup.speedup_model()
    assert model.conv.out_channels == 4
    assert torch.allclose(model(x), expected, atol=1e-5)
    assert speedup.report.folded


def test_a_constant_that_cannot_be_folded_keeps_its_channels_and_the_output_exact():
    model = _randomise_bn(ConvBnConv()).eval()
    x = torch.randn(2, 3, 8, 8)
    mask = torch.ones(16, 3, 3, 3, dtype=torch.bool)
    mask[:4] = False
    attach_masks(model, {"conv1": {"weight": mask}})
    with torch.no_grad():
        expected = model(x)
    speedup = ModelSpeedup(model, x)
    with pytest.warns(UserWarning, match="cannot be folded exactly into conv2"):
        speedup.speedup_model()
    assert model.conv1.out_channels > 12  # channels whose BN shift reaches the padded conv2 stay
    assert torch.allclose(model(x), expected, atol=1e-5)


class ReadsItsWidth(nn.Module):
    """A forward that reads a layer's size attribute: shrinking changes what it computes."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.head(self.conv(x)) * self.conv.out_channels


def test_a_shrunk_model_that_differs_is_refused_and_the_model_is_unchanged():
    torch.manual_seed(0)
    model = ReadsItsWidth()
    x = torch.randn(2, 3, 4, 4)
    keep = torch.arange(8) >= 4
    masks = {"conv": {"weight": keep[:, None, None, None].expand(8, 3, 1, 1).clone(), "bias": keep}}
    attach_masks(model, masks)
    weight = model.conv.parametrizations.weight.original
    with torch.no_grad():
        expected = model(x)
    with pytest.raises(RuntimeError, match="left unchanged"):
        ModelSpeedup(model, x).speedup_model()
    assert model.conv.parametrizations.weight.original is weight and weight.shape == (8, 3, 1, 1)
    assert model.conv.out_channels == 8 and model.head.in_channels == 8
    assert get_masks(model)["conv"]["bias"].equal(keep)
    with torch.no_grad():
        assert torch.equal(model(x), expected)


class WithEmbeddingAndAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 16)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.norm = nn.LayerNorm(16)
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, tokens):
        x = self.emb(tokens)
        x = self.norm(x + self.attn(x, x, x)[0])
        x = x + self.fc2(F.gelu(self.fc1(x)))
        return self.head(x.mean(1))


def test_transformer_block_prunes_mlp_hidden_units_only():
    tokens = torch.randint(0, 20, (2, 5))
    model, _ = prune_and_speedup(WithEmbeddingAndAttention(), tokens, [{"op_types": ["Linear"], "sparse_ratio": 0.5}])
    assert model.fc1.out_features == 16 and model.fc2.in_features == 16
    assert model.attn.embed_dim == 16 and model.head.out_features == 3


def test_fpgm_with_dummy_input_also_speeds_up():
    prune_and_speedup(Residual(), torch.randn(2, 3, 8, 8), [{"op_types": ["Conv2d"], "sparse_ratio": 0.25}], FPGMPruner)


def test_dependency_group_realises_the_ratio_per_group():
    model = Residual()
    x = torch.randn(2, 3, 8, 8)
    _, masks = L1NormPruner(model, [{"op_types": ["Conv2d"], "sparse_ratio": 0.3}], dummy_input=x).compress()
    # stem and b share 16 channels (one group): floor(16 * 0.3) = 4 pruned in both
    for name in ("stem", "b"):
        assert int((~masks[name]["weight"].flatten(1).any(1)).sum()) == 4
    assert torch.equal(masks["stem"]["bias"], masks["b"]["bias"])
    assert int((~masks["a"]["bias"]).sum()) == 4


def test_count_flops_params_counts_conv_linear_and_norms():
    model = FlattenLinear().eval()
    flops, params, rows = count_flops_params(model, torch.randn(1, 1, 6, 6))
    conv = 6 * 4 * 4 * 1 * 9
    assert flops == conv + 6 * 4 * 4 + 96 * 20 + 20 * 3
    assert params == sum(p.numel() for p in model.parameters())
    assert [r["name"] for r in rows] == ["conv", "bn", "fc1", "fc2"]
    model.train()
    count_flops_params(model, torch.randn(1, 1, 6, 6))
    assert model.training


def test_a_pruned_model_saves_and_loads_into_a_fresh_instance_without_pickle(tmp_path):
    x = torch.randn(2, 3, 8, 8)
    model, _ = prune_and_speedup(Residual(), x, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}])
    path = tmp_path / "pruned.safetensors"
    save_pruned_model(model, path)
    fresh = load_pruned_model(Residual().eval(), path)
    assert fresh.stem.out_channels == 8 and fresh.bn0.num_features == 8
    assert torch.equal(fresh(x), model(x))
    with pytest.raises(ValueError, match="does not have"):
        load_pruned_model(ConvBnConv(), path)
    torch.save(model.state_dict(), tmp_path / "model.pt")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_pruned_model(Residual(), tmp_path / "model.pt")


class ManyLayerTypes(nn.Module):
    """Conv1d, Conv3d, ConvTranspose2d, GroupNorm, InstanceNorm2d, PReLU and an Embedding."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 12)
        self.c1 = nn.Conv1d(12, 8, 3, padding=1)
        self.gn = nn.GroupNorm(4, 8)
        self.prelu = nn.PReLU(8)
        self.up = nn.ConvTranspose2d(8, 6, 2, stride=2)
        self.inorm = nn.InstanceNorm2d(6, affine=True)
        self.c3 = nn.Conv3d(6, 4, 1)
        self.out = nn.Linear(4, 3)

    def forward(self, tokens):
        x = self.emb(tokens).transpose(1, 2)               # (B, 12, L)
        x = self.prelu(self.gn(self.c1(x)))                # (B, 8, L)
        x = self.inorm(self.up(x.unsqueeze(-1)))           # (B, 6, 2L, 2)
        x = self.c3(F.relu(x).unsqueeze(-1))               # (B, 4, 2L, 2, 1)
        return self.out(x.mean((2, 3, 4)))


def test_every_supported_layer_type_shrinks_exactly():
    tokens = torch.randint(0, 10, (2, 7))
    config = [{"op_types": ["Embedding", "Conv1d", "ConvTranspose2d"], "sparse_ratio": 0.5}]
    model, report = prune_and_speedup(ManyLayerTypes(), tokens, config)
    assert model.emb.embedding_dim == 6 and model.c1.in_channels == 6
    # GroupNorm removes whole groups: 2 of 4 groups of 2 channels
    assert model.c1.out_channels == 4 and (model.gn.num_channels, model.gn.num_groups) == (4, 2)
    assert model.prelu.num_parameters == 4 and model.up.in_channels == 4
    assert model.up.out_channels == 3 and model.inorm.num_features == 3 and model.c3.in_channels == 3


def test_count_flops_params_counts_attention_and_matmul():
    model = WithEmbeddingAndAttention().eval()
    tokens = torch.randint(0, 20, (2, 5))
    flops, _, rows = count_flops_params(model, tokens)
    attn = next(r for r in rows if r["type"] == "MultiheadAttention")
    # projections (q, k, v, out) plus both attention products, for 2 x 5 tokens of width 16
    assert attn["flops"] == 4 * 10 * 16 * 16 + 2 * 2 * 5 * 5 * 16
    assert flops == sum(r["flops"] for r in rows)


def test_an_output_layer_is_pruned_only_when_named_and_only_shrunk_when_asked():
    x = torch.randn(3, 1, 6, 6)
    model = _randomise_bn(FlattenLinear()).eval()
    _, masks = L1NormPruner(model, [{"op_types": ["Linear"], "sparse_ratio": 0.5}], dummy_input=x).compress()
    assert bool(masks["fc2"]["weight"].any(1).all()) and "bias" not in masks["fc2"]  # by type only: outputs kept
    model = _randomise_bn(FlattenLinear()).eval()
    _, masks = L1NormPruner(model, [{"op_names": ["fc2"], "sparse_ratio": 0.5}], dummy_input=x).compress()
    assert int((~masks["fc2"]["bias"]).sum()) == 1  # named: its outputs are pruned
    masked = model(x)
    speedup = ModelSpeedup(model, x)
    speedup.speedup_model()
    assert model.fc2.out_features == 3 and speedup.report.kept  # kept whole unless asked
    model = _randomise_bn(FlattenLinear()).eval()
    _, masks = L1NormPruner(model, [{"op_names": ["fc2"], "sparse_ratio": 0.5}], dummy_input=x).compress()
    masked = model(x)
    ModelSpeedup(model, x, prune_outputs=True).speedup_model()
    keep = masks["fc2"]["bias"]
    assert model.fc2.out_features == 2 and torch.allclose(model(x), masked[:, keep], atol=1e-6)


def test_a_second_dependency_aware_pruning_on_a_masked_model_keeps_masks_consistent():
    model, x = _randomise_bn(Residual()).eval(), torch.randn(2, 3, 8, 8)
    L1NormPruner(model, [{"op_types": ["Conv2d"], "sparse_ratio": 0.25}], dummy_input=x).compress()
    _, masks = L1NormPruner(model, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}], dummy_input=x).compress()
    assert int((~masks["stem"]["bias"]).sum()) == 8 and torch.equal(masks["stem"]["bias"], masks["bnb"]["bias"])
    expected = model(x)
    ModelSpeedup(model, x).speedup_model()
    assert model.stem.out_channels == 8 and torch.allclose(model(x), expected, atol=1e-5)


@pytest.mark.parametrize("opt_class", [torch.optim.SGD, torch.optim.Adam])
def test_parameters_keep_their_identity_and_the_optimizer_state_is_sliced(opt_class):
    torch.manual_seed(0)
    model = _randomise_bn(ConvBnConv())
    x = torch.randn(4, 3, 6, 6)
    opt = opt_class(model.parameters(), lr=0.01, **({"momentum": 0.9} if opt_class is torch.optim.SGD else {}))
    for _ in range(2):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    model.eval()
    before = {n: p for n, p in model.named_parameters()}
    state_before = {n: {k: v.clone() for k, v in opt.state[p].items() if torch.is_tensor(v)} for n, p in before.items()}
    _, masks = L1NormPruner(model, [{"op_names": ["conv1"], "sparse_ratio": 0.5}], dummy_input=x).compress()
    keep = masks["conv1"]["weight"].flatten(1).all(1)
    ModelSpeedup(model, x, masks, optimizer=opt).speedup_model()
    after = dict(model.named_parameters())
    assert all(after[n] is p for n, p in before.items())  # the same objects, now smaller
    assert model.conv1.weight.shape[0] == 8 and model.conv2.weight.shape[1] == 8
    for key, old in state_before["conv1.weight"].items():
        if old.dim():
            assert torch.equal(opt.state[model.conv1.weight][key], old[keep])
    for key, old in state_before["conv2.weight"].items():
        if old.dim():
            assert torch.equal(opt.state[model.conv2.weight][key], old[:, keep])
    model.train()
    opt.zero_grad()
    model(x).square().mean().backward()
    opt.step()  # fine-tuning goes on with the same optimizer


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"tolerance": -1.0}, ValueError, "tolerance"),
    ({"tolerance": "small"}, ValueError, "tolerance"),
    ({"verify": "yes"}, TypeError, "verify"),
    ({"prune_outputs": 1}, TypeError, "prune_outputs"),
    ({"optimizer": object()}, TypeError, "optimizer"),
])
def test_speedup_arguments_are_validated(kwargs, error, match):
    with pytest.raises(error, match=match):
        ModelSpeedup(ConvBnConv(), torch.randn(1, 3, 6, 6), {}, **kwargs)


@dataclasses.dataclass
class Prediction:
    logits: torch.Tensor
    label: torch.Tensor


class DataclassOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 6)

    def forward(self, x):
        logits = self.fc2(F.relu(self.fc1(x)))
        return Prediction(logits, logits.argmax(-1))


def test_outputs_inside_dataclasses_are_protected_and_compared_exactly_for_integers():
    torch.manual_seed(0)
    model = DataclassOutput().eval()
    x = torch.randn(5, 4)
    pruner = L1NormPruner(model, [{"op_types": ["Linear"], "sparse_ratio": 0.5}], dummy_input=x)
    _, masks = pruner.compress()
    assert bool(masks["fc2"]["weight"].any(1).all())  # no output row of the output layer is pruned
    with torch.no_grad():
        expected = model(x)
    speedup = ModelSpeedup(model, x, masks)
    speedup.speedup_model()
    out = model(x)
    assert out.logits.shape == (5, 6) and model.fc1.out_features == 4
    assert torch.equal(out.label, expected.label) and speedup.report.max_rel_diff <= 1e-6


class OpaqueOutput(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return object.__new__(type("Box", (), {"value": self.fc(x)}))


def test_an_output_the_tracer_cannot_see_into_is_refused_before_anything_changes():
    model = OpaqueOutput()
    with pytest.raises(TypeError, match="returns a Box"):
        L1NormPruner(model, [{"op_types": ["Linear"], "sparse_ratio": 0.5}], dummy_input=torch.randn(2, 4))
    mask = {"fc": {"weight": torch.arange(16).reshape(4, 4) >= 8}}
    attach_masks(model, mask)
    with pytest.raises(TypeError, match="returns a Box"):
        ModelSpeedup(model, torch.randn(2, 4)).speedup_model()
    assert get_masks(model)["fc"]["weight"].equal(mask["fc"]["weight"])  # still attached, model unchanged


def test_the_speedup_page_lists_every_layer_family_and_op_rule():
    from pathlib import Path

    from secateurs.graph import OP_RULES
    from secateurs.layers import LAYERS

    page = (Path(__file__).resolve().parent.parent / "docs" / "speedup.md").read_text()
    table = page[page.index("## What is understood"):page.index("## Refusals")]
    missing = [n for n in LAYERS.names() + OP_RULES.names() if f"`{n}`" not in table]
    assert not missing, f"docs/speedup.md does not describe {missing}"


def test_reusing_the_pruners_trace_gives_the_same_model_as_tracing_again():
    import copy

    import torchvision

    torch.manual_seed(0)
    base = _randomise_bn(torchvision.models.resnet18(num_classes=10)).eval()
    x = torch.randn(1, 3, 32, 32)
    shapes = []
    for reuse in (True, False):
        model = copy.deepcopy(base)
        _, masks = L1NormPruner(model, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}], dummy_input=x).compress()
        assert masks.trace is not None
        speedup = ModelSpeedup(model, x, masks if reuse else {k: dict(v) for k, v in masks.items()})
        speedup.speedup_model()
        assert speedup.report.max_rel_diff <= 1e-5
        shapes.append({n: p.shape for n, p in model.named_parameters()})
    assert shapes[0] == shapes[1]
    # A trace made for another example input is not reused, and the result is still exact.
    model = copy.deepcopy(base)
    _, masks = L1NormPruner(model, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}], dummy_input=x).compress()
    ModelSpeedup(model, torch.randn(2, 3, 40, 40), masks).speedup_model()
    assert {n: p.shape for n, p in model.named_parameters()} == shapes[0]


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_hugging_face_models_lose_half_their_heads_and_ffn_neurons_exactly(arch):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if arch == "bert":
        config = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=64)
        model, types = transformers.BertModel(config).eval(), ["Linear"]
        x = {"input_ids": torch.randint(0, 50, (2, 7)), "attention_mask": torch.ones(2, 7, dtype=torch.long)}
    else:
        config = transformers.GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=4, n_positions=16)
        model, types = transformers.GPT2LMHeadModel(config).eval(), ["Conv1D"]
        x = {"input_ids": torch.randint(0, 50, (2, 7)), "use_cache": False}
    params = sum(p.numel() for p in model.parameters())
    with pytest.warns(UserWarning, match="layer norm"):  # the residual stream's outputs are kept, named
        _, masks = L1NormPruner(model, [{"op_types": types, "sparse_ratio": 0.5}], dummy_input=x).compress()
    with torch.no_grad():
        expected = model(**x)[0]
    speedup = ModelSpeedup(model, x, masks)
    speedup.speedup_model()
    with torch.no_grad():
        out = model(**x)[0]
    assert torch.allclose(out, expected, atol=1e-5, rtol=1e-4)
    assert sum(p.numel() for p in model.parameters()) < params
    ffn = model.encoder.layer[0].intermediate.dense if arch == "bert" else model.transformer.h[0].mlp.c_fc
    assert (ffn.out_features if arch == "bert" else ffn.nf) == (32 if arch == "bert" else 64)  # half the FFN neurons
    attention = model.encoder.layer[0].attention.self if arch == "bert" else model.transformer.h[0].attn
    assert (attention.num_attention_heads if arch == "bert" else attention.num_heads) == 2  # half the heads
