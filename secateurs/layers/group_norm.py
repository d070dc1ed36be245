"""GroupNorm: statistics over groups of channels, so a group is pruned whole or not at all."""

from __future__ import annotations

import torch.nn as nn

from ._base import LayerFamily


def trace_group_norm(tr, name, x, num_groups, use, register):
    ids = tr.channel_in(x, 1, x.shape[1], f"input of {name} carries no channel variables")
    per = ids.view(num_groups, -1)
    tr.couple(per[:, :1].expand_as(per), per)
    register(ids)
    use.in_ids = use.out_ids = ids
    return {**dict(tr.get(x) or {}), 1: ids}


class GroupNorm(LayerFamily):
    name = "group_norm"
    types = (nn.GroupNorm,)
    channel_scale = True
    follows_input = True
    size_attrs = ("num_channels", "num_groups")

    def trace(self, tr, module, name, x, args, kwargs, out, use):
        def register(ids):
            tr.module_param(module, "weight", {0: ids})
            tr.module_param(module, "bias", {0: ids})

        return trace_group_norm(tr, name, x, module.num_groups, use, register)

    def update_attrs(self, module, n_in, n_out):
        if n_out is not None:
            per = module.num_channels // module.num_groups
            module.num_channels, module.num_groups = n_out, n_out // per

    def macs(self, module, args, out):
        return args[0].numel()
