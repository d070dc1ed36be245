"""Batch norms and instance norms: one statistic and affine pair per channel, so a
channel passes through unchanged in identity (its variable is the input's)."""

from __future__ import annotations

import torch.nn as nn

from ._base import LayerFamily

_TENSORS = ("weight", "bias", "running_mean", "running_var")


def _norm_channels(tr, module, name, x, cdim, use, ann_extra=None):
    ids = tr.channel_in(x, cdim, x.shape[cdim], f"input of {name} carries no channel variables")
    for attr in _TENSORS:
        tr.module_param(module, attr, {0: ids})
    use.in_ids = use.out_ids = ids
    return {**dict(tr.get(x) or {}), cdim: ids}


class BatchNorm(LayerFamily):
    name = "batch_norm"
    types = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
    own_tensors = _TENSORS
    channel_scale = True
    follows_input = True
    size_attrs = ("num_features",)

    def trace(self, tr, module, name, x, args, kwargs, out, use):
        return _norm_channels(tr, module, name, x, 1 if x.dim() > 1 else 0, use)

    def update_attrs(self, module, n_in, n_out):
        if n_out is not None:
            module.num_features = n_out

    def macs(self, module, args, out):
        return args[0].numel()


class InstanceNorm(BatchNorm):
    name = "instance_norm"
    types = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)

    def trace(self, tr, module, name, x, args, kwargs, out, use):
        cdim = 0 if x.dim() == module._get_no_batch_dim() else 1
        return _norm_channels(tr, module, name, x, cdim, use)
