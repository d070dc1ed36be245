"""Real architectures: prune half the channels of every Conv2d and Linear with dummy_input,
speed up, and check the shrunk model computes what the masked model computed."""

import warnings

import pytest
import torch
import torchvision

from secateurs import L1NormPruner, ModelSpeedup, get_masks

MODELS = [
    "resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2", "mobilenet_v2", "mobilenet_v3_small",
    "efficientnet_b0", "densenet121", "googlenet", "inception_v3", "mnasnet0_5", "squeezenet1_0",
    "shufflenet_v2_x1_0", "regnet_y_400mf", "vgg11_bn", "alexnet", "convnext_tiny", "vit_b_16", "swin_t",
]
# Smallest input each architecture accepts, to keep the suite fast on 2 cores.
INPUT_SIZE = {"inception_v3": 96, "vit_b_16": 224, "alexnet": 96}


def _build(name):
    torch.manual_seed(0)
    kwargs = {"aux_logits": False, "init_weights": True} if name in ("inception_v3", "googlenet") else {}
    model = getattr(torchvision.models, name)(**kwargs).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            # Real, non-trivial statistics and biases: a leaking BatchNorm beta would show.
            if isinstance(m, torch.nn.modules.batchnorm._NormBase):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
            if isinstance(m, torch.nn.Linear) and not m.weight.any():  # zero-initialised heads
                m.weight.normal_(0, 0.02, generator=g)
    return model


@pytest.mark.parametrize("name", MODELS)
def test_prune_half_the_channels_then_speedup_matches_the_masked_model(name):
    model = _build(name)
    size = INPUT_SIZE.get(name, 64)
    x = torch.randn(1, 3, size, size)
    dense_out = model(x)
    params = sum(p.numel() for p in model.parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unknown ops are named in a warning; tested elsewhere
        _, masks = L1NormPruner(model, [{"op_types": ["Conv2d", "Linear"], "sparse_ratio": 0.5}], dummy_input=x).compress()
        with torch.no_grad():
            masked_out = model(x)
        ModelSpeedup(model, x, masks).speedup_model()
    with torch.no_grad():
        out = model(x)
    assert get_masks(model) == {}
    assert out.shape == dense_out.shape
    scale = masked_out.abs().max()
    assert scale > 0
    assert (out - masked_out).abs().max() <= 1e-4 * scale
    assert sum(p.numel() for p in model.parameters()) < params
