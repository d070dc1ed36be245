"""``SplitMultiheadAttention``: what ``nn.MultiheadAttention`` computes, with its q, k and v
projections as three ``nn.Linear`` layers and any number of heads.

``nn.MultiheadAttention`` holds q, k and v in one ``in_proj_weight`` and requires
``num_heads * head_dim == embed_dim``, so it cannot lose a head. This module computes the
same thing from ``q_proj``, ``k_proj``, ``v_proj`` and ``out_proj``, splitting heads with
``view(..., -1, head_dim)``: the tracer sees each head as one prunable unit, channel pruners
on ``Linear`` layers prune whole heads, and ``ModelSpeedup`` leaves it with fewer heads of
the same width (``num_heads`` follows; ``embed_dim`` stays).
:func:`split_multihead_attention` swaps it in for every ``nn.MultiheadAttention`` of a model.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F


class SplitMultiheadAttention(nn.Module):
    """Multi-head attention with separate q/k/v projections and ``num_heads`` heads of
    width ``head_dim`` (their product may differ from ``embed_dim``).

    ``forward`` takes and returns what ``nn.MultiheadAttention.forward`` does: batch-first
    or sequence-first (``batch_first``) or unbatched inputs, ``key_padding_mask`` and
    ``attn_mask`` (bool: True = not allowed; float: added), ``need_weights`` and
    ``average_attn_weights``, attention dropout in training mode. A per-head
    ``attn_mask`` of shape ``(N * num_heads, L, S)`` is accepted, but the tracer then keeps
    every head (the mask could not follow pruning).

    Args:
        embed_dim: width of the query and of the output.
        num_heads: number of heads.
        head_dim: width of each head; default ``embed_dim // num_heads``.
        kdim / vdim: widths of key and value; default ``embed_dim``.
    """

    # Sizes that stay when heads are pruned (the tracer and the speedup read this).
    fixed_sizes: ClassVar[tuple[str, ...]] = ("embed_dim", "head_dim", "kdim", "vdim")

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int | None = None, dropout: float = 0.0,
                 bias: bool = True, kdim: int | None = None, vdim: int | None = None, batch_first: bool = False,
                 device=None, dtype=None) -> None:
        super().__init__()
        head_dim = embed_dim // num_heads if head_dim is None else head_dim
        if num_heads < 1 or head_dim < 1:
            raise ValueError(f"SplitMultiheadAttention needs num_heads >= 1 and head_dim >= 1; got {num_heads} "
                             f"and {head_dim}.")
        kind = {"device": device, "dtype": dtype}
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, head_dim
        self.kdim, self.vdim = kdim or embed_dim, vdim or embed_dim
        self.dropout, self.batch_first = float(dropout), batch_first
        inner = num_heads * head_dim
        self.q_proj = nn.Linear(embed_dim, inner, bias=bias, **kind)
        self.k_proj = nn.Linear(self.kdim, inner, bias=bias, **kind)
        self.v_proj = nn.Linear(self.vdim, inner, bias=bias, **kind)
        self.out_proj = nn.Linear(inner, embed_dim, bias=bias, **kind)

    @classmethod
    def from_multihead_attention(cls, mha: nn.MultiheadAttention) -> SplitMultiheadAttention:
        """A copy of ``mha`` (same values, new parameters, same device and dtype).

        Raises:
            ValueError: ``mha`` has ``add_bias_kv`` or ``add_zero_attn`` (not supported).
        """
        if mha.bias_k is not None or mha.add_zero_attn:
            raise ValueError("SplitMultiheadAttention does not support nn.MultiheadAttention with add_bias_kv=True or "
                             "add_zero_attn=True; keep that module as it is.")
        w = mha.in_proj_weight if mha._qkv_same_embed_dim else mha.q_proj_weight
        new = cls(mha.embed_dim, mha.num_heads, mha.head_dim, mha.dropout, mha.in_proj_bias is not None, mha.kdim,
                  mha.vdim, mha.batch_first, device=w.device, dtype=w.dtype)
        e = mha.embed_dim
        with torch.no_grad():
            if mha._qkv_same_embed_dim:
                weights = mha.in_proj_weight.detach().split(e)
            else:
                weights = (mha.q_proj_weight.detach(), mha.k_proj_weight.detach(), mha.v_proj_weight.detach())
            biases = mha.in_proj_bias.detach().split(e) if mha.in_proj_bias is not None else (None,) * 3
            for proj, w, b in zip((new.q_proj, new.k_proj, new.v_proj), weights, biases):
                proj.weight.copy_(w)
                if b is not None:
                    proj.bias.copy_(b)
            new.out_proj.weight.copy_(mha.out_proj.weight)
            if mha.out_proj.bias is not None:
                new.out_proj.bias.copy_(mha.out_proj.bias)
        return new.train(mha.training)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        if is_causal and attn_mask is None:
            raise RuntimeError("SplitMultiheadAttention: is_causal=True is a hint and needs attn_mask, as in "
                               "nn.MultiheadAttention.")
        batched = query.dim() == 3
        if not batched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        n, length, source = query.shape[0], query.shape[1], key.shape[1]
        q = self.q_proj(query).view(n, length, -1, self.head_dim).transpose(1, 2)
        k = self.k_proj(key).view(n, source, -1, self.head_dim).transpose(1, 2)
        v = self.v_proj(value).view(n, source, -1, self.head_dim).transpose(1, 2)
        scores = q @ k.transpose(-2, -1) * self.head_dim ** -0.5
        if attn_mask is not None:  # (L, S) for every head, or (N * heads, L, S), one per head
            per_head = attn_mask.dim() == 3
            scores = scores + _additive(attn_mask, scores.dtype).view(n if per_head else 1, -1, length, source)
        if key_padding_mask is not None:
            scores = scores + _additive(key_padding_mask, scores.dtype).view(n, 1, 1, source)
        weights = F.dropout(scores.softmax(-1), self.dropout, self.training)
        out = self.out_proj((weights @ v).transpose(1, 2).reshape(n, length, -1))
        if not batched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        if average_attn_weights:
            weights = weights.mean(1)
        return out, weights if batched else weights.squeeze(0)


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A mask as a float to add: a bool mask's True (not allowed) is ``-inf``."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    return mask.to(dtype)


def split_multihead_attention(model: nn.Module) -> nn.Module:
    """Replace every ``nn.MultiheadAttention`` in ``model`` by an equal
    :class:`SplitMultiheadAttention` (in place; returns ``model``, or the new module when
    ``model`` itself is one). Do it before pruning and before building an optimizer: the
    new layers have new parameters.

    Example:
        >>> import torch, torch.nn as nn
        >>> mha = nn.MultiheadAttention(8, 2, batch_first=True).eval()
        >>> x = torch.randn(3, 5, 8)
        >>> split = split_multihead_attention(mha)
        >>> bool(torch.allclose(split(x, x, x)[0], mha(x, x, x)[0], atol=1e-6))
        True
    """
    if isinstance(model, nn.MultiheadAttention):
        return SplitMultiheadAttention.from_multihead_attention(model)
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, nn.MultiheadAttention):
                setattr(parent, child_name, SplitMultiheadAttention.from_multihead_attention(child))
    return model
