"""Building the model-zoo architectures with random weights in which a leak would show.

Shared by ``test_model_zoo.py`` and the survey script that measured its expectations.
Names are torchvision builders prefixed ``tv:`` or timm model names.
"""

from __future__ import annotations

import torch
from torch import nn

# timm keyword arguments for architectures that need a smaller image size than their default.
TIMM_KWARGS = {
    "vit_tiny_patch16_224": {"img_size": 64},
    "deit_tiny_patch16_224": {"img_size": 64},
    "swin_tiny_patch4_window7_224": {"img_size": 64, "window_size": 4},
    "levit_128s": {"img_size": 64},
    "mixer_b16_224": {"img_size": 64},
    "mixer_s16_224": {"img_size": 64},
    "resmlp_12_224": {"img_size": 64},
    "coatnet_nano_rw_224": {"img_size": 64},
    "maxvit_nano_rw_256": {"img_size": 64},
    "pit_ti_224": {"img_size": 64},
    "xcit_nano_12_p16_224": {"img_size": 64},
    "cait_xxs24_224": {"img_size": 64},
    "mobilevit_xxs": {"img_size": 64},
    "efficientvit_m0": {"img_size": 64},
    "twins_svt_small": {"img_size": 64},
    "mvitv2_tiny": {"img_size": 64},
    "botnet26t_256": {"img_size": 64},
    "tnt_s_patch16_224": {"img_size": 64},
    "visformer_tiny": {"img_size": 64},
    "gcvit_xxtiny": {"img_size": 64},
}
# Smallest input each architecture accepts, to keep the suite fast on 2 cores (default 64).
INPUT_SIZE = {"tv:inception_v3": 96, "tv:vit_b_16": 224, "tv:alexnet": 96, "efficientformer_l1": 224, "halonet26t": 256}


def input_size(name: str) -> int:
    return INPUT_SIZE.get(name, 64)


def randomise(model: nn.Module, seed: int = 1) -> nn.Module:
    """Give every norm layer real statistics and every parameter a non-negligible value.

    BatchNorm running statistics and biases are random, so a removed channel whose
    BatchNorm still sends its bias on would change the output. Parameters that are
    (nearly) zero at initialisation are refilled: zero-initialised heads, last-BatchNorm
    scales (``zero_init_last``), zero biases, and layer-scale gammas of 1e-6 that would
    shrink a residual branch, and any error in it, below the test's tolerance.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._NormBase) and m.running_mean is not None:
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
        for name, p in model.named_parameters():
            if not p.is_floating_point() or p.numel() == 0 or float(p.abs().max()) >= 1e-3:
                continue
            if name.endswith("bias"):
                p.copy_(torch.rand(p.shape, generator=g) * 0.2 - 0.1)
            elif p.dim() == 1:
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    return model


def build(name: str) -> nn.Module:
    """The named architecture, random weights (seed 0), randomised as above, in eval mode."""
    torch.manual_seed(0)
    if name.startswith("tv:"):
        import torchvision

        arch = name[3:]
        kwargs = {"aux_logits": False, "init_weights": True} if arch in ("inception_v3", "googlenet") else {}
        model = getattr(torchvision.models, arch)(**kwargs)
    else:
        import timm

        model = timm.create_model(name, pretrained=False, num_classes=10, **TIMM_KWARGS.get(name, {}))
    return randomise(model).eval()
