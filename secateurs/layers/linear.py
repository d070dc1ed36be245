"""Linear layers: ``weight`` is ``(out, in)`` and acts on the last dim."""

from __future__ import annotations

import torch.nn as nn

from ._base import LayerFamily


def trace_last_dim(tr, name, x, n_in, n_out, use, register):
    """Channel flow of a layer that maps the last dim ``n_in -> n_out`` (Linear, Conv1D)."""
    last = x.dim() - 1
    in_ids = tr.channel_in(x, last, n_in, f"input of {name} carries no channel variables")
    out_ids = tr.fresh(n_out)
    register(in_ids, out_ids)
    use.in_ids, use.out_ids = in_ids, out_ids
    ann = dict(tr.get(x) or {})
    ann[last] = out_ids
    return ann


class Linear(LayerFamily):
    name = "linear"
    types = (nn.Linear,)
    size_attrs = ("in_features", "out_features")

    def trace(self, tr, module, name, x, args, kwargs, out, use):
        def register(in_ids, out_ids):
            tr.module_param(module, "weight", {0: out_ids, 1: in_ids})
            tr.module_param(module, "bias", {0: out_ids})

        return trace_last_dim(tr, name, x, module.in_features, module.out_features, use, register)

    def input_channel_dim(self, module, x):
        return x.dim() - 1

    def output_channel_dim(self, module, y):
        return y.dim() - 1

    def update_attrs(self, module, n_in, n_out):
        module.out_features, module.in_features = module.weight.shape

    def fold(self, module, gone, value):
        w = module.weight.detach()
        return w.index_select(1, gone) @ value.to(w), True

    def macs(self, module, args, out):
        y = out[0] if isinstance(out, tuple) else out
        return y.numel() * module.in_features
