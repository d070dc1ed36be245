"""Embedding: ``weight`` is ``(num_embeddings, embedding_dim)``; its output channels are
dim 1, appended as the output's last dim."""

from __future__ import annotations

import torch.nn as nn

from ._base import LayerFamily


class Embedding(LayerFamily):
    name = "embedding"
    types = (nn.Embedding,)
    own_tensors = ("weight",)
    size_attrs = ("embedding_dim",)

    def weight_dims(self, module):
        return 1, None

    def trace(self, tr, module, name, x, args, kwargs, out, use):
        out_ids = tr.fresh(module.embedding_dim)
        tr.module_param(module, "weight", {1: out_ids})
        use.out_ids = out_ids
        return {x.dim(): out_ids}

    def output_channel_dim(self, module, y):
        return y.dim() - 1

    def update_attrs(self, module, n_in, n_out):
        module.embedding_dim = module.weight.shape[1]
