"""Equivalence suite over every speedup rule: one minimal model per layer family and op rule.

Each case is either *exact* (prune with ``L1NormPruner`` and ``dummy_input``, then
``ModelSpeedup``: the shrunk model computes what the masked model computed, on the
example input and on a batch of another size, with fewer parameters) or *refused*: its
channels cannot be removed exactly, and secateurs either raises one clear error naming the
layer or op, or keeps the watched layer's channels and still matches the masked model.
Never a crash from inside the model's forward, never a silent difference.

Expectations follow from what is mathematically possible, not from what the engine does
today. Two meta tests keep the suite complete: every registered op rule and layer family
has a case, and every case's trace really used the rules it claims to cover.
"""

from __future__ import annotations

import os
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import secateurs
from secateurs import L1NormPruner, ModelSpeedup, get_masks
from secateurs.graph import trace_channels

TOLERANCE = 1e-4


@dataclass(frozen=True)
class Case:
    """One rule exercised by one tiny model.

    Attributes:
        id: test id.
        factory: builds the model (random weights; the suite randomises norms further).
        example: batch size -> model input (a tensor or a tuple of positional inputs).
        config: the ``config_list`` for ``L1NormPruner``.
        covers: layer family and op rule names this case exercises.
        expect: ``"exact"`` or ``"refused:<name>[|<name>...]"``, names of the layer or op an
            error message must name.
        watch: for a refused case, the module whose channels must stay when no error is raised.
    """

    id: str
    factory: Callable[[], nn.Module]
    example: Callable[[int], Any]
    config: list
    covers: frozenset
    expect: str = "exact"
    watch: str | None = None


def _image(c, h=8, w=None):
    return lambda b: torch.randn(b, c, h, h if w is None else w, generator=torch.Generator().manual_seed(10 + b))


def _seq(c, n=6):
    return lambda b: torch.randn(b, n, c, generator=torch.Generator().manual_seed(20 + b))


def _tokens(vocab, n=7):
    return lambda b: torch.randint(0, vocab, (b, n), generator=torch.Generator().manual_seed(30 + b))


def _names(*ops):
    return [{"op_names": list(ops), "sparse_ratio": 0.5}]


def _types(*types):
    return [{"op_types": list(types), "sparse_ratio": 0.5}]


def _cbr(c_in, c_out, k=3, **kw):
    """conv -> BatchNorm -> ReLU."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, padding=k // 2, **kw), nn.BatchNorm2d(c_out), nn.ReLU())


# -- layer families --------------------------------------------------------------------------


class ConvBnLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = _cbr(3, 8), _cbr(8, 8)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        return self.head(self.b(self.a(x)).mean((2, 3)))


class Conv1dChain(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.bn = nn.Conv1d(4, 8, 3, padding=1), nn.BatchNorm1d(8)
        self.c2 = nn.Conv1d(8, 6, 1)

    def forward(self, x):
        return self.c2(F.relu(self.bn(self.c1(x))))


class Conv3dChain(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.bn = nn.Conv3d(2, 6, 3, padding=1), nn.BatchNorm3d(6)
        self.c2 = nn.Conv3d(6, 4, 1)

    def forward(self, x):
        return self.c2(F.relu(self.bn(self.c1(x))))


class GroupedConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.pw = _cbr(3, 12, 1)
        self.grouped, self.bn = nn.Conv2d(12, 12, 3, padding=1, groups=3), nn.BatchNorm2d(12)
        self.out = nn.Conv2d(12, 4, 1)

    def forward(self, x):
        return self.out(F.relu(self.bn(self.grouped(self.pw(x)))))


class DepthwiseConv(nn.Module):
    def __init__(self, multiplier=1):
        super().__init__()
        self.pw = _cbr(3, 8, 1)
        self.dw = nn.Conv2d(8, 8 * multiplier, 3, padding=1, groups=8)
        self.bn = nn.BatchNorm2d(8 * multiplier)
        self.out = nn.Conv2d(8 * multiplier, 4, 1)

    def forward(self, x):
        return self.out(F.relu(self.bn(self.dw(self.pw(x)))))


class DepthwiseAfterConstant(nn.Module):
    """Removed channels carry sigmoid(0) = 0.5 into a padded depthwise conv."""

    def __init__(self):
        super().__init__()
        self.pw, self.bn1 = nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8)
        self.dw, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8)
        self.out = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = torch.sigmoid(self.bn1(self.pw(x)))
        return self.out(F.relu(self.bn2(self.dw(x))))


class ConvTransposeChain(nn.Module):
    def __init__(self, groups=1):
        super().__init__()
        self.pw = _cbr(3, 8, 1)
        self.up, self.bn = nn.ConvTranspose2d(8, 8, 2, stride=2, groups=groups), nn.BatchNorm2d(8)
        self.up2 = nn.ConvTranspose2d(8, 4, 3, padding=1)

    def forward(self, x):
        return self.up2(F.relu(self.bn(self.up(self.pw(x)))))


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(6, 16), nn.Linear(16, 12), nn.Linear(12, 3)

    def forward(self, x):
        return self.fc3(F.gelu(self.fc2(F.relu(self.fc1(x)))))


class Norm(nn.Module):
    """conv -> norm -> activation -> conv, for one per-channel norm layer."""

    def __init__(self, norm, act=None):
        super().__init__()
        self.conv, self.norm = nn.Conv2d(3, 8, 3, padding=1), norm
        self.act = act or nn.ReLU()
        self.out = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.out(self.act(self.norm(self.conv(x))))


class LayerNormOverSpatial(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.norm = nn.Conv2d(3, 8, 3, padding=1), nn.LayerNorm([8, 8])
        self.out = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.out(F.relu(self.norm(self.conv(x))))


class LayerNormOverChannels(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.feat_ln, self.fc2 = nn.Linear(6, 16), nn.LayerNorm(16), nn.Linear(16, 4)

    def forward(self, x):
        return self.fc2(self.feat_ln(F.relu(self.fc1(x))))


class LayerNorm2d(nn.LayerNorm):
    """timm's LayerNorm2d: a LayerNorm over the channels of an NCHW tensor."""

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ChannelsFirstLayerNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.chan_ln2d = nn.Conv2d(3, 8, 3, padding=1), LayerNorm2d(8)
        self.out = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.out(self.chan_ln2d(self.conv(x)))


class FunctionalLayerNorm(nn.Module):
    """F.layer_norm over channels (channels last) or over the last spatial dim."""

    def __init__(self, over_channels):
        super().__init__()
        self.over_channels = over_channels
        self.conv, self.out = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)
        self.weight = nn.Parameter(torch.rand(8) + 0.5)  # 8 channels, or a width of 8
        self.bias = nn.Parameter(torch.rand(8) - 0.5)

    def forward(self, x):
        x = self.conv(x)
        if self.over_channels:
            x = F.layer_norm(x.permute(0, 2, 3, 1), (8,), self.weight, self.bias).permute(0, 3, 1, 2)
        else:
            x = F.layer_norm(x, x.shape[-1:], self.weight, self.bias)  # over the width (8)
        return self.out(F.relu(x))


class EmbeddingTied(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 16)
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 16)
        self.head = nn.Linear(16, 20, bias=False)
        self.head.weight = self.emb.weight  # the same Parameter

    def forward(self, tokens):
        x = self.emb(tokens)
        x = x + self.fc2(F.relu(self.fc1(x)))
        return self.head(x)


class Attention(nn.Module):
    def __init__(self, with_mlp):
        super().__init__()
        self.with_mlp = with_mlp
        self.inp = nn.Linear(6, 16)
        self.mha = nn.MultiheadAttention(16, 2, batch_first=True)
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        x = self.inp(x)
        x = x + self.mha(x, x, x, need_weights=False)[0]
        if self.with_mlp:
            x = x + self.fc2(F.relu(self.fc1(x)))
        return self.head(x)


class HFConv1DMlp(nn.Module):
    """GPT-2's MLP: transformers' Conv1D, a Linear with a transposed weight."""

    def __init__(self):
        super().__init__()
        from transformers.pytorch_utils import Conv1D

        self.inp = nn.Linear(6, 16)
        self.c_fc, self.c_proj = Conv1D(32, 16), Conv1D(16, 32)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        x = self.inp(x)
        x = x + self.c_proj(F.gelu(self.c_fc(x)))
        return self.head(x)


class ScaledConv(nn.Conv2d):
    """A conv subclass with an extra per-output-channel parameter used in its forward."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.scale = nn.Parameter(torch.rand(self.out_channels) + 0.5)

    def forward(self, x):
        return super().forward(x) * self.scale.view(1, -1, 1, 1)


class ConvSubclass(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = ScaledConv(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.out = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.out(F.relu(self.bn(self.conv(x))))


class WeightNormConv(nn.Module):
    """``wn`` carries torch.nn.utils.parametrizations.weight_norm (weight = g * v / ||v||)."""

    def __init__(self):
        super().__init__()
        self.pre = _cbr(3, 8)
        self.wn = torch.nn.utils.parametrizations.weight_norm(nn.Conv2d(8, 8, 3, padding=1))
        self.out = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.out(F.relu(self.wn(self.pre(x))))


class FunctionalConv(nn.Module):
    """F.conv2d with a parameter held by the module, consuming pruned channels."""

    def __init__(self):
        super().__init__()
        self.pre = _cbr(3, 8)
        self.weight = nn.Parameter(torch.randn(6, 8, 3, 3) * 0.2)
        self.bias = nn.Parameter(torch.rand(6) - 0.5)
        self.out = nn.Conv2d(6, 4, 1)

    def forward(self, x):
        return self.out(F.relu(F.conv2d(self.pre(x), self.weight, self.bias, padding=1)))


# -- op rules -------------------------------------------------------------------------------


class Unary(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.out = _cbr(3, 8), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = F.hardswish(F.silu(self.a(x)))
        x = torch.tanh(x.clamp(-2.0, 2.0)) + F.gelu(-x).abs()
        return self.out(F.dropout(torch.sigmoid(x) * 2.0, 0.5, training=False))


class ResidualAdd(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = _cbr(3, 8)
        self.a, self.b = _cbr(8, 8), nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.out = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(x + self.b(self.a(x)))
        return self.out(x - 0.5)


class LayerScale(nn.Module):
    """A per-channel parameter broadcast over the spatial dims, indexed with None."""

    def __init__(self):
        super().__init__()
        self.a, self.out = _cbr(3, 8), nn.Conv2d(8, 4, 1)
        self.gamma = nn.Parameter(torch.rand(8) + 0.5)

    def forward(self, x):
        return self.out(self.a(x) * self.gamma[:, None, None])


class SqueezeExcite(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = _cbr(3, 8)
        self.reduce, self.expand = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1)
        self.out = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = self.a(x)
        s = torch.sigmoid(self.expand(F.relu(self.reduce(x.mean((2, 3), keepdim=True)))))
        return self.out(x * s)


class MeanOverChannels(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.out = _cbr(3, 8), nn.Conv2d(1, 4, 1)

    def forward(self, x):
        return self.out(self.a(x).mean(1, keepdim=True))


class PoolAndResample(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.out = _cbr(3, 8), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = F.max_pool2d(self.a(x), 2)
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        x = F.avg_pool2d(x, 3, stride=1, padding=1) + F.adaptive_avg_pool2d(x, 1)
        return self.out(x)


class Softmax(nn.Module):
    def __init__(self, over_channels):
        super().__init__()
        self.over_channels = over_channels
        self.a, self.out = _cbr(3, 8), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = self.a(x)
        if self.over_channels:
            return self.out(torch.softmax(x, dim=1))
        b, c, h, w = x.shape
        return self.out(F.softmax(x.flatten(2), dim=-1).view(b, c, h, w))


class FlattenLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = _cbr(3, 6)
        self.fc1, self.fc2 = nn.Linear(6 * 4 * 4, 20), nn.Linear(20, 3)

    def forward(self, x):
        x = F.max_pool2d(self.a(x), 2)
        return self.fc2(F.relu(self.fc1(x.view(x.shape[0], -1))))


class ChannelShuffle(nn.Module):
    """ShuffleNet's shuffle: view into groups, transpose, flatten back (sizes from the input)."""

    def __init__(self):
        super().__init__()
        self.groups = 2
        self.a, self.out = _cbr(3, 8), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = self.a(x)
        b, c, h, w = x.shape
        x = x.view(b, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(b, c, h, w)
        return self.out(x)


class ChannelsLastMlp(nn.Module):
    """ConvNeXt-style: permute to channels last, Linear layers, movedim back."""

    def __init__(self):
        super().__init__()
        self.a = _cbr(3, 8)
        self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 8)
        self.out = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = self.a(x)
        y = self.fc2(F.gelu(self.fc1(x.permute(0, 2, 3, 1))))
        return self.out(x + y.movedim(-1, 1))


class UnsqueezeSqueeze(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.bn = nn.Conv1d(4, 8, 3, padding=1), nn.BatchNorm1d(8)
        self.c2 = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = F.relu(self.bn(self.c1(x))).unsqueeze(-1)
        return self.c2(x).squeeze(-1)


class ExpandGate(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.out = _cbr(3, 8), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = self.a(x)
        g = x.amax((2, 3), keepdim=True).expand_as(x)
        return self.out(x * g + x.mean((2, 3), keepdim=True).expand(-1, -1, x.shape[2], x.shape[3]))


class Concat(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dim = dim
        self.l, self.r = _cbr(3, 8, 1), _cbr(3, 6 if dim == 1 else 8)
        self.out = nn.Conv2d(14 if dim == 1 else 8, 4, 1)

    def forward(self, x):
        return self.out(torch.cat([self.l(x), self.r(x)], dim=self.dim))


class Stack(nn.Module):
    """Stack two branches on a new dim: reduced over it, or interleaved into the channels."""

    def __init__(self, interleave):
        super().__init__()
        self.interleave = interleave
        self.l, self.r = _cbr(3, 8, 1), _cbr(3, 8)
        self.out = nn.Conv2d(16 if interleave else 8, 4, 1)

    def forward(self, x):
        if self.interleave:
            return self.out(torch.stack([self.l(x), self.r(x)], dim=2).flatten(1, 2))
        return self.out(torch.stack([self.l(x), self.r(x)], dim=1).sum(1))


class SplitSpatial(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.out = _cbr(3, 8), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        top, bottom = torch.split(self.a(x), [3, 5], dim=2)
        left, right = bottom.split_with_sizes([4, 4], dim=3)
        return self.out(F.pad(top, (0, 0, 0, 5)) + F.pad(left * right, (0, 4, 3, 0)))


class SplitSizesAttribute(nn.Module):
    """FasterNet's partial conv: torch.split with sizes held in an attribute."""

    def __init__(self):
        super().__init__()
        self.sizes = [3, 5]
        self.a = _cbr(3, 8)
        self.l, self.r = nn.Conv2d(3, 4, 1), nn.Conv2d(5, 4, 1)

    def forward(self, x):
        left, right = torch.split(self.a(x), self.sizes, 1)
        return self.l(left) + self.r(right)


class ChunkGate(nn.Module):
    """GLU: chunk(2) along channels, the halves multiplied: channel i and i + 8 go together."""

    def __init__(self):
        super().__init__()
        self.a, self.out = _cbr(3, 16), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        value, gate = self.a(x).chunk(2, dim=1)
        return self.out(value * torch.sigmoid(gate))


class ChunkTwoConsumers(nn.Module):
    """chunk(2) along channels into two different convs: exact when both halves shrink alike."""

    def __init__(self):
        super().__init__()
        self.a = _cbr(3, 16)
        self.l, self.r = nn.Conv2d(8, 4, 1), nn.Conv2d(8, 4, 3, padding=1)
        with torch.no_grad():  # the first half ranks higher: a ranking alone would keep it whole
            self.a[0].weight[:8] *= 3

    def forward(self, x):
        left, right = self.a(x).chunk(2, dim=1)
        return self.l(left) + self.r(right)


class UnbindStackDim(nn.Module):
    def __init__(self):
        super().__init__()
        self.l, self.r = _cbr(3, 8, 1), _cbr(3, 8)
        self.out = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        both = torch.stack([self.l(x), self.r(x)], dim=1)
        first, second = both.unbind(1)
        return self.out(first * second)


class UnbindChannels(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.out = _cbr(3, 4), nn.Conv2d(1, 4, 1)

    def forward(self, x):
        c0, c1, c2, c3 = self.a(x).unbind(1)
        return self.out((c0 * c1 + c2 * c3).unsqueeze(1))


class Narrow(nn.Module):
    """narrow along the width (exact) or along the channels with an attribute's length."""

    def __init__(self, channels):
        super().__init__()
        self.channels = channels
        self.length = 6
        self.first, self.second = _cbr(3, 6), _cbr(3, 2, 1)
        self.l, self.r = nn.Conv2d(6, 4, 1), nn.Conv2d(2, 4, 1)

    def forward(self, x):
        a, b = self.first(x), self.second(x)
        if self.channels:
            return self.l(torch.cat([a, b], 1).narrow(1, 0, self.length)) + self.r(b)
        return self.l(a.narrow(3, 1, 6)) + self.r(b.narrow(-1, 0, 6))


class Slices(nn.Module):
    """Basic indexing: slices of spatial dims, None, Ellipsis (exact), or a hard-coded
    channel slice ``x[:, :self.c]`` as GhostNet's ``out[:, :self.out_chs]`` (refused)."""

    def __init__(self, channels):
        super().__init__()
        self.channels = channels
        self.c = 6
        self.first, self.second = _cbr(3, 6), _cbr(3, 2, 1)
        self.l, self.r = nn.Conv2d(6, 4, 1), nn.Conv2d(2, 4, 1)

    def forward(self, x):
        a, b = self.first(x), self.second(x)
        if self.channels:
            y = torch.cat([a, b], 1)
            return self.l(y[:, : self.c]) + self.r(y[:, self.c :])
        y = a[:, :, 1:-1, ::2][..., None].squeeze(-1)
        return self.l(F.pad(y, (0, 4, 1, 1))) + self.r(b[:, :])


class MatmulAttention(nn.Module):
    """Channels contracted by matmul/bmm with themselves (a non-local block)."""

    def __init__(self):
        super().__init__()
        self.a, self.v = _cbr(3, 8), nn.Conv2d(3, 6, 1)
        self.out = nn.Conv2d(6, 4, 1)

    def forward(self, x):
        b, _, h, w = x.shape
        q = self.a(x).flatten(2)                                  # (b, 8, hw)
        attn = torch.softmax(q.transpose(1, 2) @ q, dim=-1)      # (b, hw, hw)
        v = self.v(x).flatten(2)                                  # (b, 6, hw)
        return self.out(torch.bmm(v, attn).view(b, -1, h, w))


class FunctionalLinear(nn.Module):
    """F.linear with the weight and bias of a Linear module that is never called itself."""

    def __init__(self):
        super().__init__()
        self.inp, self.proj, self.head = nn.Linear(6, 8), nn.Linear(8, 16), nn.Linear(16, 3)

    def forward(self, x):
        h = F.relu(self.inp(x))
        return self.head(F.relu(F.linear(h, self.proj.weight, self.proj.bias)))


class Sdpa(nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(16, 8), nn.Linear(16, 8), nn.Linear(16, 12)
        self.head = nn.Linear(12, 4)

    def forward(self, x):
        q, k, v = self.q(x).unsqueeze(1), self.k(x).unsqueeze(1), self.v(x).unsqueeze(1)
        return self.head(F.scaled_dot_product_attention(q, k, v).squeeze(1))


class PadChannels(nn.Module):
    """ResNet option-A shortcut: zero channels padded on both sides, added to a branch."""

    def __init__(self):
        super().__init__()
        self.narrow_branch, self.wide_branch = _cbr(3, 8), _cbr(3, 12, 1)
        self.out = nn.Conv2d(12, 4, 1)

    def forward(self, x):
        return self.out(F.pad(self.narrow_branch(x), (0, 0, 0, 0, 2, 2)) + self.wide_branch(x))


class PadSpatial(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.out = _cbr(3, 8), nn.Conv2d(8, 4, 3)

    def forward(self, x):
        return self.out(F.pad(self.a(x), (1, 1, 1, 1), mode="reflect"))


class Roll(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dim = dim
        self.a, self.out = _cbr(3, 8), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.out(torch.roll(self.a(x), shifts=2, dims=self.dim))


def _bn(c, **kw):
    return nn.BatchNorm2d(c, **kw)


class BatchNormAct(nn.BatchNorm2d):
    """timm's BatchNormAct2d in miniature: its own forward calls F.batch_norm, then an activation."""

    def forward(self, x):
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return F.relu(x)


class GroupNormAct(nn.GroupNorm):
    def forward(self, x):
        return F.silu(F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps))


CASES = [
    # layer families
    Case("conv_bn_linear", ConvBnLinear, _image(3), _types("Conv2d"),
         frozenset({"conv", "batch_norm", "unary", "reduce", "linear"})),
    Case("conv1d", Conv1dChain, lambda b: torch.randn(b, 4, 10), _names("c1"), frozenset({"conv", "batch_norm"})),
    Case("conv3d", Conv3dChain, lambda b: torch.randn(b, 2, 4, 5, 5), _names("c1"), frozenset({"conv", "batch_norm"})),
    Case("grouped_conv", GroupedConv, _image(3), _names("pw.0", "grouped"), frozenset({"conv", "batch_norm"}), "refused:grouped convolution", "pw.0"),
    Case("depthwise_conv", DepthwiseConv, _image(3), _names("pw.0"), frozenset({"conv", "batch_norm"})),
    Case("depthwise_conv_multiplier_2", lambda: DepthwiseConv(2), _image(3), _names("pw.0"), frozenset({"conv"}), "refused:grouped convolution", "pw.0"),
    Case("depthwise_conv_after_bn_constant", DepthwiseAfterConstant, _image(3), _names("pw"),
         frozenset({"conv", "batch_norm", "unary"})),
    Case("conv_transpose", ConvTransposeChain, _image(3, 6), _names("pw.0", "up"),
         frozenset({"conv_transpose", "conv"})),
    Case("conv_transpose_grouped", lambda: ConvTransposeChain(groups=2), _image(3, 6), _names("pw.0", "up"),
         frozenset({"conv_transpose"}), "refused:groups=2", "up"),
    Case("conv_transpose_depthwise", lambda: ConvTransposeChain(groups=8), _image(3, 6), _names("pw.0"),
         frozenset({"conv_transpose"})),
    Case("linear_mlp", Mlp, _seq(6), _types("Linear"), frozenset({"linear", "unary"})),
    Case("batch_norm_no_affine", lambda: Norm(_bn(8, affine=False)), _image(3), _names("conv"),
         frozenset({"batch_norm"})),
    Case("instance_norm_affine", lambda: Norm(nn.InstanceNorm2d(8, affine=True)), _image(3), _names("conv"),
         frozenset({"instance_norm"})),
    Case("instance_norm_plain", lambda: Norm(nn.InstanceNorm2d(8)), _image(3), _names("conv"),
         frozenset({"instance_norm"})),
    Case("group_norm", lambda: Norm(nn.GroupNorm(4, 8)), _image(3), _names("conv"), frozenset({"group_norm"})),
    Case("prelu_per_channel", lambda: Norm(_bn(8), nn.PReLU(8)), _image(3), _names("conv"), frozenset({"prelu"})),
    Case("prelu_shared", lambda: Norm(_bn(8), nn.PReLU()), _image(3), _names("conv"), frozenset({"prelu"})),
    Case("layer_norm_over_spatial", LayerNormOverSpatial, _image(3), _names("conv"), frozenset({"layer_norm"}), "refused:norm", "conv"),
    Case("layer_norm_over_channels", LayerNormOverChannels, _seq(6), _names("fc1"), frozenset({"layer_norm"}),
         "refused:feat_ln", "fc1"),
    Case("layer_norm2d_subclass", ChannelsFirstLayerNorm, _image(3), _names("conv"),
         frozenset({"functional_layer_norm", "permute"}), "refused:chan_ln2d|layer_norm", "conv"),
    Case("embedding_tied_head", EmbeddingTied, _tokens(20), _types("Embedding", "Linear"),
         frozenset({"embedding", "linear"})),
    Case("multihead_attention_input", lambda: Attention(with_mlp=False), _seq(6), _names("inp"),
         frozenset({"multihead_attention"}), "refused:mha", "inp"),
    Case("multihead_attention_with_mlp", lambda: Attention(with_mlp=True), _seq(6), _names("fc1"),
         frozenset({"multihead_attention", "linear"})),
    Case("hf_conv1d", HFConv1DMlp, _seq(6), _names("c_fc"), frozenset({"hf_conv1d"})),
    Case("conv_subclass_extra_parameter", ConvSubclass, _image(3), _names("conv"), frozenset({"functional_conv"})),
    Case("weight_norm_conv", WeightNormConv, _image(3), _names("pre.0", "wn"), frozenset({"conv"}), "refused:WeightNorm", "wn"),
    # op rules
    Case("functional_conv", FunctionalConv, _image(3), _names("pre.0"), frozenset({"functional_conv"})),
    Case("unary", Unary, _image(3), _names("a.0"), frozenset({"unary", "binary"})),
    Case("residual_add", ResidualAdd, _image(3), _types("Conv2d"), frozenset({"binary"})),
    Case("layer_scale_parameter", LayerScale, _image(3), _names("a.0"), frozenset({"binary", "getitem"})),
    Case("squeeze_excite", SqueezeExcite, _image(3), _names("a.0", "reduce"), frozenset({"reduce", "binary"})),
    Case("mean_over_channels", MeanOverChannels, _image(3), _names("a.0"), frozenset({"reduce"}),
         "refused:mean", "a.0"),
    Case("pool_and_resample", PoolAndResample, _image(3), _names("a.0"), frozenset({"spatial", "binary"})),
    Case("softmax_over_spatial", lambda: Softmax(False), _image(3), _names("a.0"), frozenset({"softmax", "reshape"})),
    Case("softmax_over_channels", lambda: Softmax(True), _image(3), _names("a.0"), frozenset({"softmax"}),
         "refused:softmax", "a.0"),
    Case("flatten_into_linear", FlattenLinear, _image(3), _types("Conv2d", "Linear"),
         frozenset({"reshape", "linear", "spatial"})),
    Case("channel_shuffle", ChannelShuffle, _image(3), _names("a.0"), frozenset({"reshape"}), "refused:view", "a.0"),
    Case("permute_movedim_channels_last", ChannelsLastMlp, _image(3), _names("a.0", "fc1"),
         frozenset({"permute", "linear"})),
    Case("unsqueeze_squeeze", UnsqueezeSqueeze, lambda b: torch.randn(b, 4, 10), _names("c1"),
         frozenset({"unsqueeze"})),
    Case("expand", ExpandGate, _image(3), _names("a.0"), frozenset({"expand", "reduce"})),
    Case("cat_channels", lambda: Concat(1), _image(3), _names("l.0", "r.0"), frozenset({"cat"})),
    Case("cat_width", lambda: Concat(3), _image(3), _names("l.0", "r.0"), frozenset({"cat"})),
    Case("stack_then_reduce", lambda: Stack(False), _image(3), _names("l.0", "r.0"), frozenset({"stack", "reduce"})),
    Case("stack_interleaved", lambda: Stack(True), _image(3), _names("l.0", "r.0"), frozenset({"stack", "reshape"})),
    Case("split_spatial", SplitSpatial, _image(3), _names("a.0"), frozenset({"split", "pad"})),
    Case("split_sizes_attribute", SplitSizesAttribute, _image(3), _names("a.0"), frozenset({"split"}),
         "refused:split", "a.0"),
    Case("chunk_gate", ChunkGate, _image(3), _names("a.0"), frozenset({"chunk", "binary"})),
    Case("chunk_two_consumers", ChunkTwoConsumers, _image(3), _names("a.0"), frozenset({"chunk"})),
    Case("unbind_stack_dim", UnbindStackDim, _image(3), _names("l.0", "r.0"), frozenset({"unbind", "stack"})),
    Case("unbind_channels", UnbindChannels, _image(3), _names("a.0"), frozenset({"unbind"}),
         "refused:unbind", "a.0"),
    Case("narrow_width", lambda: Narrow(False), _image(3), _names("first.0", "second.0"), frozenset({"narrow"})),
    Case("narrow_channels_attribute", lambda: Narrow(True), _image(3), _names("first.0"), frozenset({"narrow"}),
         "refused:narrow", "first.0"),
    Case("getitem_spatial_slices", lambda: Slices(False), _image(3), _names("first.0", "second.0"),
         frozenset({"getitem", "pad"})),
    Case("getitem_channel_slice_attribute", lambda: Slices(True), _image(3), _names("first.0"),
         frozenset({"getitem"}), "refused:getitem|indexing", "first.0"),
    Case("matmul_bmm", MatmulAttention, _image(3, 4), _names("a.0", "v"),
         frozenset({"matmul", "reshape", "permute"})),
    Case("functional_linear", FunctionalLinear, _seq(6), _names("inp", "proj"), frozenset({"functional_linear"})),
    Case("sdpa_value_dims", Sdpa, _seq(16), _names("v"), frozenset({"sdpa", "unsqueeze"})),
    Case("sdpa_query_key_dims", Sdpa, _seq(16), _names("q", "k"), frozenset({"sdpa"}),
         "refused:scaled_dot_product_attention|sdpa", "q"),
    Case("pad_channels", PadChannels, _image(3), _names("narrow_branch.0", "wide_branch.0"),
         frozenset({"pad", "binary"}), "refused:pad", "narrow_branch.0"),
    Case("pad_spatial_reflect", PadSpatial, _image(3), _names("a.0"), frozenset({"pad"})),
    Case("roll_spatial", lambda: Roll(3), _image(3), _names("a.0"), frozenset({"roll"})),
    Case("roll_channels", lambda: Roll(1), _image(3), _names("a.0"), frozenset({"roll"}), "refused:roll", "a.0"),
    Case("functional_layer_norm_over_width", lambda: FunctionalLayerNorm(False), _image(3), _names("conv"),
         frozenset({"functional_layer_norm"}), "refused:layer_norm", "conv"),
    Case("functional_layer_norm_over_channels", lambda: FunctionalLayerNorm(True), _image(3), _names("conv"),
         frozenset({"functional_layer_norm", "permute"}), "refused:layer_norm", "conv"),
    Case("functional_batch_norm", lambda: Norm(BatchNormAct(8)), _image(3), _names("conv"),
         frozenset({"functional_batch_norm", "unary"})),
    Case("functional_group_norm", lambda: Norm(GroupNormAct(4, 8)), _image(3), _names("conv"),
         frozenset({"functional_group_norm", "unary"})),
]
BY_ID = {c.id: c for c in CASES}
assert len(BY_ID) == len(CASES), "case ids must be unique"


def randomise(model: nn.Module) -> nn.Module:
    """Real norm statistics and affine parameters, and no zero-initialised tensor, so a leak shows."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._NormBase) and m.running_mean is not None:
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 2 - 1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            if isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)):
                if isinstance(getattr(m, "weight", None), torch.Tensor):
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                if isinstance(getattr(m, "bias", None), torch.Tensor):
                    m.bias.copy_(torch.rand(m.bias.shape, generator=g) * 2 - 1)
            if isinstance(m, nn.PReLU):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.4 + 0.05)
        for name, p in model.named_parameters():
            if p.is_floating_point() and float(p.abs().max()) < 1e-3:
                p.copy_(torch.rand(p.shape, generator=g) * 0.2 - 0.1 if name.endswith("bias") else
                        torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def build(case: Case) -> nn.Module:
    torch.manual_seed(0)
    return randomise(case.factory())


def run(model: nn.Module, inputs: Any) -> torch.Tensor:
    with torch.no_grad():
        return model(*inputs) if isinstance(inputs, tuple) else model(inputs)


def assert_close(out: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    assert out.shape == expected.shape, f"{what}: output shape {tuple(out.shape)} != {tuple(expected.shape)}"
    scale = float(expected.abs().max())
    assert scale > 0, f"{what}: the masked model outputs only zeros"
    diff = float((out - expected).abs().max())
    assert diff <= TOLERANCE * scale, f"{what}: sped-up differs from masked by {diff / scale:.3g} (relative)"


_PACKAGE = os.path.dirname(secateurs.__file__) + os.sep


def raised_by_secateurs(exc: BaseException) -> bool:
    """Was ``exc`` raised by secateurs itself (a refusal), not by the model's own forward?"""
    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and frames[-1].filename.startswith(_PACKAGE)


def _weights(module: nn.Module) -> dict[str, torch.Size]:
    return {n: p.shape for n, p in module.named_parameters()}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_sped_up_model_computes_what_the_masked_model_computed(case):
    model = build(case)
    x, x_other = case.example(2), case.example(3)
    before = sum(p.numel() for p in model.parameters())
    dense = run(model, x)
    refused = case.expect.startswith("refused:")
    names = case.expect.split(":", 1)[1].split("|") if refused else []
    watched = _weights(model.get_submodule(case.watch)) if case.watch else {}

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            _, masks = L1NormPruner(model, case.config, dummy_input=x).compress()
        except (ValueError, RuntimeError) as exc:
            if not refused or not raised_by_secateurs(exc):
                raise
            assert any(n in str(exc) for n in names), f"the refusal does not name {names}: {exc}"
            return
        masked, masked_other = run(model, x), run(model, x_other)
        try:
            ModelSpeedup(model, x, masks).speedup_model()
        except (ValueError, RuntimeError) as exc:
            if not refused or not raised_by_secateurs(exc):
                raise
            assert any(n in str(exc) for n in names), f"the refusal does not name {names}: {exc}"
            assert torch.equal(run(model, x), masked), "a refused speedup changed the model"
            return
    out, out_other = run(model, x), run(model, x_other)
    assert get_masks(model) == {}
    assert out.shape == dense.shape
    assert_close(out, masked, "example input")
    assert_close(out_other, masked_other, "input of another batch size")
    if refused:
        assert _weights(model.get_submodule(case.watch)) == watched, f"{case.watch} lost channels"
    else:
        assert sum(p.numel() for p in model.parameters()) < before, "nothing was removed"
        assert not caught, f"an exact case warned: {[str(w.message) for w in caught]}"


def test_every_rule_has_a_case():
    from secateurs.graph.rules import OP_RULES
    from secateurs.layers import LAYERS

    registered = set(OP_RULES.names()) | set(LAYERS.names())
    covered = set().union(*(c.covers for c in CASES))
    assert not registered - covered, f"rules without an equivalence case: {sorted(registered - covered)}"
    assert not covered - registered, f"cases claim rules that are not registered: {sorted(covered - registered)}"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_case_exercises_the_rules_it_covers(case):
    model = build(case)
    graph = trace_channels(model, case.example(2))
    assert set(case.covers) <= graph.rules_used, f"not used in the trace: {sorted(set(case.covers) - graph.rules_used)}"
