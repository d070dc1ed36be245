"""LayerNorm: statistics over the normalised dims, so channels there are kept (removing
one would change the mean and variance of the others)."""

from __future__ import annotations

import torch.nn as nn

from ._base import LayerFamily


def fix_normalised(tr, name, x, n_dims):
    ann = dict(tr.get(x) or {})
    for d in range(x.dim() - n_dims, x.dim()):
        if d in ann:
            tr.fix(ann[d], f"{name} (layer norm) normalises over these channels")
    return ann


class LayerNorm(LayerFamily):
    name = "layer_norm"
    types = (nn.LayerNorm,)
    size_attrs = ("normalized_shape",)

    def trace(self, tr, module, name, x, args, kwargs, out, use):
        ann = fix_normalised(tr, name, x, len(module.normalized_shape))
        last = {d: ids for d, ids in ann.items() if d >= x.dim() - len(module.normalized_shape)}
        shift = x.dim() - len(module.normalized_shape)
        params = {d - shift: ids for d, ids in last.items()}
        tr.module_param(module, "weight", params)
        tr.module_param(module, "bias", params)
        return ann

    def macs(self, module, args, out):
        return args[0].numel()
