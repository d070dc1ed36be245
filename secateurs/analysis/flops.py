"""Count multiply-accumulates (MACs, reported as FLOPs as NNI did) and parameters.

One forward pass with hooks; each layer's count comes from its family
(:meth:`secateurs.layers.LayerFamily.macs`). Conventions (per sample batch given):
    Conv: output elements x (in_channels / groups) x kernel size.
    ConvTranspose: input elements x (out_channels / groups) x kernel size.
    Linear: output elements x in_features. Bias adds are not counted.
    BatchNorm / LayerNorm / GroupNorm / InstanceNorm: one MAC per input element.
    MultiheadAttention: the q/k/v and output projections plus both attention products.
    matmul / bmm / mm / scaled_dot_product_attention outside those layers: their products.
Element-wise ops, pooling and activations are not counted.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from ..graph.trace import call_with
from ..layers import LAYERS
from ..targets import module_type_name

class _MatmulCounter(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.depth = 0
        self.macs = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if self.depth == 0 and name in ("matmul", "bmm", "mm", "__matmul__", "baddbmm", "addmm"):
            a, b = (args[1], args[2]) if name in ("baddbmm", "addmm") else (args[0], args[1])
            if isinstance(out, torch.Tensor) and a.dim() >= 1:
                self.macs += out.numel() * a.shape[-1]
        elif self.depth == 0 and name == "scaled_dot_product_attention":
            q, k, v = args[0], args[1], args[2]
            self.macs += q.numel() // q.shape[-1] * k.shape[-2] * (q.shape[-1] + v.shape[-1])
        return out


def count_flops_params(model: nn.Module, dummy_input: Any) -> tuple[int, int, list[dict]]:
    """FLOPs (MACs) of one forward pass on ``dummy_input``, parameters, and a per-layer table.

    Args:
        dummy_input: a tensor, a tuple of positional inputs or a dict of keyword arguments.

    Returns:
        ``(flops, params, rows)``; each row has name, type, input/output shapes, flops, params.
        The model's train/eval mode is restored afterwards.

    Example:
        >>> import torch, torch.nn as nn
        >>> flops, params, rows = count_flops_params(nn.Linear(4, 3), torch.randn(2, 4))
        >>> flops, params
        (24, 15)
    """
    rows: list[dict] = []
    counter = _MatmulCounter()
    handles = []
    names = {m: n for n, m in model.named_modules()}

    def pre(module, args):
        counter.depth += 1

    def post(module, args, out):
        counter.depth -= 1
        if counter.depth:
            return
        y = out[0] if isinstance(out, tuple) else out
        rows.append({
            "name": names.get(module, "?") or type(module).__name__,
            "type": module_type_name(module),
            "input_shape": tuple(args[0].shape) if args and isinstance(args[0], torch.Tensor) else None,
            "output_shape": tuple(y.shape) if isinstance(y, torch.Tensor) else None,
            "flops": LAYERS.family_of(module).macs(module, args, out),
            "params": sum(p.numel() for p in module.parameters()),
        })

    for m in model.modules():
        if LAYERS.family_of(m) is not None:
            handles.append(m.register_forward_pre_hook(pre))
            handles.append(m.register_forward_hook(post))
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad(), counter:
            call_with(model, dummy_input)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    params = sum(p.numel() for p in model.parameters())
    if counter.macs:
        rows.append({"name": "(matmul outside layers)", "type": "matmul", "input_shape": None,
                     "output_shape": None, "flops": counter.macs, "params": 0})
    return sum(r["flops"] for r in rows), params, rows
