"""nn.MultiheadAttention: its inner width must equal ``embed_dim``, so its channels are
kept whole. To prune its heads, swap in :class:`~secateurs.layers.SplitMultiheadAttention`
first (:func:`~secateurs.layers.split_multihead_attention`), which computes the same."""

from __future__ import annotations

import torch.nn as nn

from ._base import LayerFamily


class MultiheadAttention(LayerFamily):
    name = "multihead_attention"
    types = (nn.MultiheadAttention,)
    own_tensors = ("in_proj_weight", "in_proj_bias", "q_proj_weight", "k_proj_weight", "v_proj_weight",
                   "bias_k", "bias_v")

    def weight_dims(self, module):
        return None, None

    def out_channel_refusal(self, module):
        return ("nn.MultiheadAttention keeps its width (its inner width must equal embed_dim); "
                "secateurs.layers.split_multihead_attention(model) makes its heads prunable")

    def trace(self, tr, module, name, x, args, kwargs, out, use):
        why = (f"{name} (nn.MultiheadAttention) keeps its channels; secateurs.layers.split_multihead_attention(model) "
               "makes its heads prunable")
        for a in list(args) + list(kwargs.values()):
            tr.fix_ann(tr.get(a), why)
        out_ids = tr.fresh(module.embed_dim)
        tr.fix(out_ids, why)
        use.out_ids = out_ids
        first = out[0] if isinstance(out, tuple) else out
        tr.set(first, {first.dim() - 1: out_ids})
        return None

    def macs(self, module, args, out):
        q = args[0]
        k = args[1] if len(args) > 1 else q
        e = module.embed_dim
        lq, lk = q.numel() // e, k.numel() // e
        proj = (lq + 2 * lk) * e * e + lq * e * e
        if q.dim() == 2:
            return proj + 2 * lq * lk * e
        b = q.shape[0] if module.batch_first else q.shape[1]
        return proj + 2 * b * (lq // b) * (lk // b) * e
