"""Convolutions (Conv1d/2d/3d): plain, depthwise and grouped."""

from __future__ import annotations

import math

import torch.nn as nn

from ._base import LayerFamily, stored


def _kind(groups: int, c_in: int, c_out: int) -> str:
    if groups == 1:
        return "dense"
    return "depthwise" if groups == c_in == c_out else "grouped"


class Conv(LayerFamily):
    """``weight`` is ``(out, in / groups, *kernel)``.

    Dense convs create fresh output channels from their input channels. A depthwise conv
    (``groups == in == out``) maps channel i to channel i, so its input and output are
    one channel variable. Other grouped convs keep their channels (pruning would have to
    remove whole groups in step on both sides).
    """

    name = "conv"
    types = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    size_attrs = ("in_channels", "out_channels", "groups")

    def weight_dims(self, module):
        kind = _kind(module.groups, module.in_channels, module.out_channels)
        return 0, (1 if kind == "dense" else None)

    def trace(self, tr, module, name, x, args, kwargs, out, use):
        cdim = x.dim() - stored(module).dim() + 1
        return trace_conv(tr, name, x, cdim, module.in_channels, module.out_channels, module.groups, use,
                          lambda ann: tr.module_param(module, "weight", ann),
                          lambda ann: tr.module_param(module, "bias", ann))

    def input_channel_dim(self, module, x):
        return x.dim() - stored(module).dim() + 1

    def update_attrs(self, module, n_in, n_out):
        kind = _kind(module.groups, module.in_channels, module.out_channels)
        c_out = stored(module).shape[0]
        if kind == "depthwise":
            module.in_channels = module.out_channels = module.groups = c_out
        else:
            module.in_channels, module.out_channels = stored(module).shape[1] * module.groups, c_out

    def fold(self, module, gone, value):
        w = module.weight.detach()
        if _kind(module.groups, module.in_channels, module.out_channels) != "dense":
            return None  # a depthwise conv's removed inputs are its removed outputs
        padded = module.padding == "same" or any(p != 0 for p in module.padding)
        # Zero padding breaks a constant input at the borders; other modes repeat it.
        exact = not padded or module.padding_mode != "zeros"
        contribution = (w.index_select(1, gone).sum(dim=tuple(range(2, w.dim()))) * value.to(w)).sum(1)
        return contribution, exact

    def macs(self, module, args, out):
        y = out[0] if isinstance(out, tuple) else out
        return y.numel() * (module.in_channels // module.groups) * math.prod(module.kernel_size)


def trace_conv(tr, name, x, cdim, c_in, c_out, groups, use, weight, bias):
    """The channel flow of a convolution, shared by the module and ``F.conv*``.

    ``weight``/``bias`` register the tensors' dims (``{dim: ids}``)."""
    in_ids = tr.channel_in(x, cdim, c_in, f"input of {name} carries no channel variables")
    kind = _kind(groups, c_in, c_out)
    if kind == "depthwise":
        out_ids = in_ids
        weight({0: out_ids})
    elif kind == "grouped":
        why = f"grouped convolution {name} (groups={groups}) keeps its channels"
        tr.fix(in_ids, why)
        out_ids = tr.fresh(c_out)
        tr.fix(out_ids, why)
        weight({0: out_ids})
    else:
        out_ids = tr.fresh(c_out)
        weight({0: out_ids, 1: in_ids})
    bias({0: out_ids})
    use.in_ids, use.out_ids = in_ids, out_ids
    ann = dict(tr.get(x) or {})
    ann.pop(cdim, None)
    tr.fix_ann(ann, f"{name} mixes positions of a channel-carrying dim")
    return {cdim: out_ids}


