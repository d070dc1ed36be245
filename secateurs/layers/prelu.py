"""PReLU: one slope per channel (dim 1), or one shared slope."""

from __future__ import annotations

import torch.nn as nn

from ._base import LayerFamily


class PReLU(LayerFamily):
    name = "prelu"
    types = (nn.PReLU,)
    own_tensors = ("weight",)
    follows_input = True
    size_attrs = ("num_parameters",)

    def trace(self, tr, module, name, x, args, kwargs, out, use):
        ann = dict(tr.get(x) or {})
        if module.num_parameters == 1:
            return ann
        cdim = 1 if x.dim() > 1 else 0
        ids = tr.channel_in(x, cdim, x.shape[cdim], f"input of {name} carries no channel variables")
        tr.module_param(module, "weight", {0: ids})
        use.in_ids = use.out_ids = ids
        return {**ann, cdim: ids}

    def update_attrs(self, module, n_in, n_out):
        module.num_parameters = module.weight.shape[0]
