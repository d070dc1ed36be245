"""Hugging Face's ``Conv1D`` (GPT-2, GPT): a linear layer whose weight is stored
transposed, ``(in, out)``, with sizes in ``nx`` / ``nf``."""

from __future__ import annotations

from torch.nn.utils import parametrize

from ._base import LayerFamily, stored


def _original_class(module):
    """The module's own class (a masked module's class is a parametrized subclass)."""
    return type(module).__bases__[0] if parametrize.is_parametrized(module) else type(module)
from .linear import trace_last_dim


class HFConv1D(LayerFamily):
    name = "hf_conv1d"
    types = ()
    size_attrs = ("nx", "nf")

    def claims(self, module):
        # Matched by name so that transformers stays optional.
        cls = _original_class(module)
        return cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers") and hasattr(module, "nf")

    def is_plain(self, module):
        direct = {n for n, _ in module.named_parameters(recurse=False)}
        return _original_class(module).__module__.startswith("transformers") and direct <= {"weight", "bias"}

    def weight_dims(self, module):
        return 1, 0

    def trace(self, tr, module, name, x, args, kwargs, out, use):
        def register(in_ids, out_ids):
            tr.module_param(module, "weight", {0: in_ids, 1: out_ids})
            tr.module_param(module, "bias", {0: out_ids})

        return trace_last_dim(tr, name, x, stored(module).shape[0], module.nf, use, register)

    def input_channel_dim(self, module, x):
        return x.dim() - 1

    def output_channel_dim(self, module, y):
        return y.dim() - 1

    def update_attrs(self, module, n_in, n_out):
        module.nx, module.nf = module.weight.shape

    def fold(self, module, gone, value):
        w = module.weight.detach()
        return value.to(w) @ w.index_select(0, gone), True

    def macs(self, module, args, out):
        return out.numel() * stored(module).shape[0]
