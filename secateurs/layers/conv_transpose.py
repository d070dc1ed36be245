"""Transposed convolutions (ConvTranspose1d/2d/3d)."""

from __future__ import annotations

import math

import torch.nn as nn

from ._base import LayerFamily, stored
from .conv import _kind


class ConvTranspose(LayerFamily):
    """``weight`` is ``(in, out / groups, *kernel)``: output channels are dim 1.

    A depthwise transposed conv (``groups == in == out``) maps channel i to channel i
    (its weight is ``(C, 1, *kernel)``, channels on dim 0). Other grouped ones keep their
    channels. A constant on removed input channels is not folded: the output of a
    transposed conv of a constant is not constant at the borders.
    """

    name = "conv_transpose"
    types = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
    size_attrs = ("in_channels", "out_channels", "groups")

    def weight_dims(self, module):
        kind = _kind(module.groups, module.in_channels, module.out_channels)
        if kind == "depthwise":
            return 0, None
        return (1, 0) if kind == "dense" else (None, None)

    def out_channel_refusal(self, module):
        if _kind(module.groups, module.in_channels, module.out_channels) == "grouped":
            return (f"{type(module).__name__} with groups={module.groups} stores each output channel in several "
                    "groups of its weight; only dense and depthwise transposed convolutions can be pruned by channel")
        return None

    def trace(self, tr, module, name, x, args, kwargs, out, use):
        cdim = x.dim() - stored(module).dim() + 1
        in_ids = tr.channel_in(x, cdim, module.in_channels, f"input of {name} carries no channel variables")
        kind = _kind(module.groups, module.in_channels, module.out_channels)
        if kind == "depthwise":
            out_ids = in_ids
            tr.module_param(module, "weight", {0: in_ids})
        elif kind == "grouped":
            why = f"grouped transposed convolution {name} (groups={module.groups}) keeps its channels"
            tr.fix(in_ids, why)
            out_ids = tr.fresh(module.out_channels)
            tr.fix(out_ids, why)
            tr.module_param(module, "weight", {0: in_ids})
        else:
            out_ids = tr.fresh(module.out_channels)
            tr.module_param(module, "weight", {0: in_ids, 1: out_ids})
        tr.module_param(module, "bias", {0: out_ids})
        use.in_ids, use.out_ids = in_ids, out_ids
        ann = dict(tr.get(x) or {})
        ann.pop(cdim, None)
        tr.fix_ann(ann, f"{name} mixes positions of a channel-carrying dim")
        return {cdim: out_ids}

    def input_channel_dim(self, module, x):
        return x.dim() - stored(module).dim() + 1

    def update_attrs(self, module, n_in, n_out):
        w = module.weight
        if _kind(module.groups, module.in_channels, module.out_channels) == "depthwise":
            module.in_channels = module.out_channels = module.groups = w.shape[0]
        else:
            module.in_channels, module.out_channels = w.shape[0], w.shape[1] * module.groups

    def macs(self, module, args, out):
        return args[0].numel() * (module.out_channels // module.groups) * math.prod(module.kernel_size)
