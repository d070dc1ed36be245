"""Run a model once and record, for every tensor, which channel variable each position of
its channel-carrying dims belongs to.

Every output channel a layer creates is a fresh *variable*. Ops pass variables along
(activations, pooling, BatchNorm), join them (residual add: the two operands' channel
``i`` must be kept or pruned together), concatenate or slice them (cat, split), or
expand them (flatten into a Linear). Ops whose result would change if a channel were
removed (softmax or LayerNorm over channels, an op this module does not know) mark the
variables they touch *fixed*: never pruned. The result is a :class:`ChannelGraph`; its
components (variables joined by couplings) are what can be pruned, each as a whole.

Tracing runs the real forward pass once, in eval mode and without gradients, and
restores the train/eval mode of every module afterwards; ``requires_grad`` flags and
buffers are untouched.
"""

from __future__ import annotations

import math
import re
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch.nn.utils import parametrize
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from ..targets import module_type_name

Ids = torch.Tensor  # 1-D int64: position -> variable
_PARAMETRIZED = re.compile(r"\.parametrizations\.(\w+)\.original$")
Ann = dict  # dim -> Ids, for the dims of a tensor that carry channel variables

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONVT = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
_IN = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
LEAF_TYPES = (*_CONV, *_CONVT, nn.Linear, *_BN, *_IN, nn.GroupNorm, nn.LayerNorm, nn.PReLU, nn.Embedding,
              nn.MultiheadAttention)

_UNARY = {
    "relu", "relu_", "relu6", "gelu", "silu", "silu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "hardswish",
    "hardswish_", "hardsigmoid", "hardsigmoid_", "hardtanh", "hardtanh_", "leaky_relu", "leaky_relu_", "elu",
    "elu_", "selu", "celu", "softplus", "mish", "softsign", "tanhshrink", "logsigmoid", "dropout", "dropout_",
    "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout", "clone", "contiguous", "to",
    "float", "double", "half", "bfloat16", "type", "type_as", "detach", "neg", "neg_", "abs", "exp", "log",
    "sqrt", "rsqrt", "square", "clamp", "clamp_", "clamp_min", "clamp_max", "clip", "erf", "sin", "cos",
    "reciprocal", "sign", "relu6_", "threshold", "threshold_", "requires_grad_", "__neg__", "__abs__",
    "nan_to_num", "exp_", "mul_scalar", "cpu", "cuda",
}
_BINARY = {
    "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "true_divide", "floor_divide", "maximum",
    "minimum", "pow", "pow_", "fmod", "remainder", "__add__", "__radd__", "__iadd__", "__sub__", "__rsub__",
    "__isub__", "__mul__", "__rmul__", "__imul__", "__truediv__", "__rtruediv__", "__itruediv__", "__pow__",
    "__rpow__", "where", "eq", "ne", "lt", "le", "gt", "ge", "__eq__", "__ne__", "__lt__", "__le__", "__gt__",
    "__ge__", "addcmul", "lerp", "masked_fill", "masked_fill_", "copysign", "rsub", "__and__", "__or__",
}
_REDUCE = {"mean", "sum", "amax", "amin", "max", "min", "std", "var", "norm", "logsumexp", "prod", "argmax",
           "argmin", "all", "any", "median", "nansum", "nanmean"}
_SPATIAL = {"max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
            "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d",
            "adaptive_max_pool2d", "adaptive_max_pool3d", "interpolate", "upsample", "upsample_nearest",
            "upsample_bilinear", "lp_pool2d", "max_pool2d_with_indices", "max_pool1d_with_indices",
            "max_pool3d_with_indices", "adaptive_max_pool2d_with_indices", "fractional_max_pool2d"}
_FACTORY = {"new_zeros", "new_ones", "new_full", "new_empty", "new_tensor", "zeros_like", "ones_like",
            "empty_like", "full_like", "rand_like", "randn_like", "randint_like"}
_IGNORED = {"size", "dim", "numel", "__get__", "__len__", "__bool__", "__index__", "__int__", "__float__",
            "__format__", "__repr__", "__hash__", "item", "tolist", "is_floating_point", "is_contiguous",
            "element_size", "stride", "data_ptr", "__setstate__", "get_device", "_assert", "dim_order",
            "has_names", "is_complex", "storage_offset", "untyped_storage", "numpy", "__iter__", "__contains__",
            "nelement", "ndimension", "__array__", "__reduce_ex__", "__deepcopy__"}


@dataclass
class ModuleUse:
    """What the trace saw of one leaf module (first call; later calls are coupled to it)."""

    name: str
    type_name: str
    in_ids: Ids | None = None
    out_ids: Ids | None = None


@dataclass
class ChannelGraph:
    """Channel variables of a traced model and how they are coupled.

    Attributes:
        n_vars: number of variables.
        component: variable -> component id (coupled variables share one).
        fixed: per component, True when it must never be pruned.
        tensors: parameter/buffer fully qualified name -> {dim: ids}, for every tensor a
            pruning decision would slice.
        modules: leaf module name -> :class:`ModuleUse`.
        reasons: component -> why it is fixed (first reason seen), for reports.
        unknown_ops: op name -> count, for ops that made channels unprunable.
    """

    n_vars: int
    component: torch.Tensor
    fixed: torch.Tensor
    tensors: dict[str, dict[int, Ids]]
    modules: dict[str, ModuleUse]
    reasons: dict[int, str] = field(default_factory=dict)
    unknown_ops: dict[str, int] = field(default_factory=dict)
    input_stats: dict[str, torch.Tensor] = field(default_factory=dict)
    output: Any = None

    def components_of(self, ids: Ids) -> torch.Tensor:
        return self.component[ids]

    def prunable(self, ids: Ids) -> torch.Tensor:
        """Bool per position: may this position's channel be pruned?"""
        return ~self.fixed[self.component[ids]]


def _norm_dim(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


class _Tracer:
    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.n = 0
        self.edges_a: list[Ids] = []
        self.edges_b: list[Ids] = []
        self.fixed_ids: list[tuple[Ids, str]] = []
        self.ann: dict[int, tuple[torch.Tensor, Ann]] = {}
        self.depth = 0
        self.tensors: dict[str, dict[int, Ids]] = {}
        self.modules: dict[str, ModuleUse] = {}
        self.unknown: Counter[str] = Counter()
        # A masked parameter is stored as "<module>.parametrizations.<name>.original";
        # it is known here by its plain name "<module>.<name>".
        plain = lambda n: _PARAMETRIZED.sub(r".\1", n)  # noqa: E731
        self.param_names = {id(p): plain(n) for n, p in model.named_parameters(remove_duplicate=False)}
        self.param_names.update({id(b): plain(n) for n, b in model.named_buffers(remove_duplicate=False)})
        self.module_names = {id(m): n for n, m in model.named_modules(remove_duplicate=False)}
        self.keep_alive: list[Any] = []
        self.record_inputs = False
        self.input_stats: dict[str, torch.Tensor] = {}

    # -- variables -------------------------------------------------------------------
    def fresh(self, n: int) -> Ids:
        ids = torch.arange(self.n, self.n + n)
        self.n += n
        return ids

    def couple(self, a: Ids, b: Ids) -> None:
        if a.numel() != b.numel():
            raise AssertionError("coupled id vectors differ in length")
        self.edges_a.append(a.reshape(-1))
        self.edges_b.append(b.reshape(-1))

    def fix(self, ids: Ids, why: str) -> None:
        self.fixed_ids.append((ids.reshape(-1), why))

    def fix_ann(self, ann: Ann | None, why: str) -> None:
        for ids in (ann or {}).values():
            self.fix(ids, why)

    # -- annotations -----------------------------------------------------------------
    def get(self, t: Any) -> Ann | None:
        if not isinstance(t, torch.Tensor):
            return None
        hit = self.ann.get(id(t))
        if hit is not None and hit[0] is t:
            return hit[1]
        name = self.param_names.get(id(t))
        if name is not None:  # a parameter or buffer used directly in forward
            return self.register_tensor(name, t, {d: self.fresh(s) for d, s in enumerate(t.shape) if s > 1})
        return None

    def set(self, t: Any, ann: Ann | None) -> None:
        if isinstance(t, torch.Tensor) and ann:
            self.ann[id(t)] = (t, ann)
            self.keep_alive.append(t)

    def register_tensor(self, name: str, t: torch.Tensor, ann: Ann) -> Ann:
        known = self.tensors.get(name)
        if known is None:
            self.tensors[name] = dict(ann)
            self.ann[id(t)] = (t, dict(ann))
            self.keep_alive.append(t)
            return ann
        for d, ids in ann.items():  # the tensor is used again: its variables are the same
            if d in known:
                self.couple(known[d], ids)
            else:
                known[d] = ids
        return known

    # -- leaf modules ------------------------------------------------------------------
    def module_param(self, module: nn.Module, attr: str, ann: Ann) -> None:
        if parametrize.is_parametrized(module, attr):
            t = module.parametrizations[attr].original
        else:
            t = getattr(module, attr, None)
        if isinstance(t, torch.Tensor) and id(t) in self.param_names:
            self.register_tensor(self.param_names[id(t)], t, ann)

    def channel_in(self, x: torch.Tensor, dim: int, size: int, why: str) -> Ids:
        """The variables of x's channel dim ``dim``; fresh fixed ones when x carries none."""
        ann = self.get(x) or {}
        ids = ann.get(dim)
        if ids is None or ids.numel() != size:
            ids = self.fresh(size)
            self.fix(ids, why)
        return ids

    def on_module(self, module: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
        name = self.module_names.get(id(module), "?")
        kind = module_type_name(module)
        x = args[0] if args else next(iter(kwargs.values()), None)
        ann = dict(self.get(x) or {})
        use = ModuleUse(name, kind)
        out_ann: Ann | None = None
        if isinstance(module, (*_CONV, *_CONVT)):
            transposed = isinstance(module, _CONVT)
            cdim = x.dim() - module.weight.dim() + 1
            c_in = module.in_channels
            in_ids = self.channel_in(x, cdim, c_in, f"input of {name} carries no channel variables")
            depthwise = module.groups == c_in == module.out_channels
            if depthwise:
                out_ids = in_ids
            elif module.groups > 1:
                self.fix(in_ids, f"grouped convolution {name} (groups={module.groups})")
                out_ids = self.fresh(module.out_channels)
                self.fix(out_ids, f"grouped convolution {name} (groups={module.groups})")
            else:
                out_ids = self.fresh(module.out_channels)
            use.in_ids, use.out_ids = in_ids, out_ids
            w_out, w_in = (1, 0) if transposed else (0, 1)
            w_ann = {w_out: out_ids} if depthwise or module.groups > 1 else {w_out: out_ids, w_in: in_ids}
            if transposed and module.groups > 1:
                w_ann = {0: in_ids} if depthwise else {}
            self.module_param(module, "weight", w_ann)
            self.module_param(module, "bias", {0: out_ids})
            ann.pop(cdim, None)
            self.fix_ann(ann, f"{name} mixes positions of a channel-carrying dim")
            out_ann = {cdim: out_ids}
        elif isinstance(module, nn.Linear):
            last = x.dim() - 1
            in_ids = self.channel_in(x, last, module.in_features, f"input of {name} carries no channel variables")
            out_ids = self.fresh(module.out_features)
            use.in_ids, use.out_ids = in_ids, out_ids
            self.module_param(module, "weight", {0: out_ids, 1: in_ids})
            self.module_param(module, "bias", {0: out_ids})
            ann.pop(last, None)
            out_ann = {**ann, last: out_ids}
        elif isinstance(module, (*_BN, *_IN, nn.GroupNorm)) or (
            isinstance(module, nn.PReLU) and module.num_parameters > 1
        ):
            cdim = 1 if x.dim() > 1 else 0
            if isinstance(module, _IN) and x.dim() == module._get_no_batch_dim():
                cdim = 0
            size = x.shape[cdim]
            ids = self.channel_in(x, cdim, size, f"input of {name} carries no channel variables")
            if isinstance(module, nn.GroupNorm):
                per = ids.view(module.num_groups, -1)
                self.couple(per[:, :1].expand_as(per), per)  # a group is pruned whole or not at all
            use.in_ids = use.out_ids = ids
            for attr in ("weight", "bias", "running_mean", "running_var"):
                self.module_param(module, attr, {0: ids})
            out_ann = {**ann, cdim: ids}
        elif isinstance(module, nn.LayerNorm):
            nd = len(module.normalized_shape)
            for d in range(x.dim() - nd, x.dim()):
                if d in ann:
                    self.fix(ann[d], f"{name} (LayerNorm) normalises over these channels")
            out_ann = ann
        elif isinstance(module, nn.PReLU):
            out_ann = ann
        elif isinstance(module, nn.Embedding):
            out_ids = self.fresh(module.embedding_dim)
            use.out_ids = out_ids
            self.module_param(module, "weight", {1: out_ids})
            out_ann = {x.dim(): out_ids}
        elif isinstance(module, nn.MultiheadAttention):
            for a in list(args) + list(kwargs.values()):
                self.fix_ann(self.get(a), f"{name} (MultiheadAttention) is not pruned")
            out_ids = self.fresh(module.embed_dim)
            self.fix(out_ids, f"{name} (MultiheadAttention) is not pruned")
            use.out_ids = out_ids
            first = out[0] if isinstance(out, tuple) else out
            self.set(first, {first.dim() - 1: out_ids})
            self.modules.setdefault(name, use)
            return
        if self.record_inputs and use.in_ids is not None and isinstance(module, (*_CONV, nn.Linear)):
            cdim = x.dim() - 1 if isinstance(module, nn.Linear) else x.dim() - module.weight.dim() + 1
            per = x.detach().movedim(cdim, 0).reshape(x.shape[cdim], -1)
            stats = torch.stack([per.amin(1), per.amax(1), per.mean(1)])
            prev = self.input_stats.get(name)
            if prev is not None:
                stats = torch.stack([torch.minimum(prev[0], stats[0]), torch.maximum(prev[1], stats[1]), prev[2]])
            self.input_stats[name] = stats
        known = self.modules.get(name)
        if known is None:
            self.modules[name] = use
        else:  # a module called twice uses the same weights: its channels are the same
            for a, b in ((known.in_ids, use.in_ids), (known.out_ids, use.out_ids)):
                if a is not None and b is not None:
                    self.couple(a, b)
        self.set(out, out_ann)

    # -- functions -------------------------------------------------------------------
    def peek(self, t: Any) -> Ann | None:
        """The annotation ``t`` already has (a parameter gets one only when a rule asks)."""
        hit = self.ann.get(id(t)) if isinstance(t, torch.Tensor) else None
        return hit[1] if hit is not None and hit[0] is t else None

    def unknown_op(self, name: str, tensors: Sequence[torch.Tensor]) -> None:
        touched = False
        for t in tensors:
            ann = self.peek(t)  # parameters not yet seen by a rule carry nothing to lose
            if ann:
                touched = True
                self.fix_ann(ann, f"unknown op {name!r}")
        if touched:
            self.unknown[name] += 1

    def on_function(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        name = getattr(func, "__name__", str(func))
        if name in _IGNORED:
            return
        flat_in, _ = tree_flatten((args, kwargs))
        tensors_in = [t for t in flat_in if isinstance(t, torch.Tensor)]
        if name in _FACTORY or not any(self.peek(t) or id(t) in self.param_names for t in tensors_in):
            return  # nothing channel-carrying comes out
        handler = _RULES.get(name)
        if name in _UNARY:
            handler = _rule_unary
        elif name in _BINARY:
            handler = _rule_binary
        elif name in _REDUCE:
            handler = _rule_reduce
        elif name in _SPATIAL:
            handler = _rule_spatial
        if handler is None:
            self.unknown_op(name, tensors_in)
            return
        handler(self, name, args, kwargs, out)

    # -- result ----------------------------------------------------------------------
    def finish(self, outputs: Any, free_outputs: Any = ()) -> ChannelGraph:
        free = [self.modules[n].out_ids for n in free_outputs if n in self.modules and self.modules[n].out_ids is not None]
        for t in tree_flatten(outputs)[0]:
            for ids in (self.get(t) or {}).values():
                if not any(ids is f for f in free):
                    self.fix(ids, "model output")
        n = self.n
        label = torch.arange(n)
        if self.edges_a:
            a, b = torch.cat(self.edges_a), torch.cat(self.edges_b)
            while True:
                low = torch.minimum(label[a], label[b])
                new = label.clone()
                new.scatter_reduce_(0, a, low, reduce="amin")
                new.scatter_reduce_(0, b, low, reduce="amin")
                new = new[new]
                if torch.equal(new, label):
                    break
                label = new
        _, component = torch.unique(label, return_inverse=True)
        n_comp = int(component.max()) + 1 if n else 0
        fixed = torch.zeros(n_comp, dtype=torch.bool)
        reasons: dict[int, str] = {}
        for ids, why in self.fixed_ids:
            comps = component[ids].unique()
            new = comps[~fixed[comps]]
            for c in new.tolist()[:1]:
                reasons.setdefault(c, why)
            fixed[comps] = True
        return ChannelGraph(n, component, fixed, self.tensors, self.modules, reasons, dict(self.unknown),
                            self.input_stats, outputs)


# -- op rules -------------------------------------------------------------------------


def _first_tensor(args: tuple, kwargs: dict) -> torch.Tensor | None:
    for a in list(args) + list(kwargs.values()):
        if isinstance(a, torch.Tensor):
            return a
    return None


def _rule_unary(tr: _Tracer, name, args, kwargs, out) -> None:
    x = _first_tensor(args, kwargs)
    ann = tr.get(x)
    if isinstance(out, torch.Tensor) and out.shape == x.shape:
        tr.set(out, dict(ann))
    else:
        tr.unknown_op(name, [x])


def _broadcast_join(tr: _Tracer, tensors: Sequence[torch.Tensor], out_shape: Sequence[int], why: str) -> Ann:
    """Join the channel variables of broadcast operands, aligned from the right."""
    nd = len(out_shape)
    result: Ann = {}
    for d in range(nd):
        seen: list[Ids] = []
        untracked_full = False
        for t in tensors:
            td = d - (nd - t.dim())
            if td < 0 or t.shape[td] == 1 and out_shape[d] != 1:
                continue
            ids = (tr.get(t) or {}).get(td)
            if ids is None:
                untracked_full = True
            else:
                seen.append(ids)
        if not seen:
            continue
        for ids in seen[1:]:
            tr.couple(seen[0], ids)
        if untracked_full and out_shape[d] > 1:
            tr.fix(seen[0], why)
        result[d] = seen[0]
    return result


def _rule_binary(tr: _Tracer, name, args, kwargs, out) -> None:
    tensors = [t for t in list(args) + list(kwargs.values()) if isinstance(t, torch.Tensor)]
    if not isinstance(out, torch.Tensor):
        tr.unknown_op(name, tensors)
        return
    tr.set(out, _broadcast_join(tr, tensors, out.shape, f"'{name}' with an operand that carries no channel variables"))


def _dims_arg(args, kwargs, ndim, pos=1, key="dim") -> list[int] | None:
    d = kwargs.get(key, args[pos] if len(args) > pos else None)
    if d is None:
        return None
    if isinstance(d, int):
        d = [d]
    return [_norm_dim(int(x), ndim) for x in d]


def _rule_reduce(tr: _Tracer, name, args, kwargs, out) -> None:
    x = args[0]
    if len(args) > 1 and isinstance(args[1], torch.Tensor):  # torch.max(a, b) is element-wise
        _rule_binary(tr, name, args, kwargs, out)
        return
    ann = tr.get(x) or {}
    dims = _dims_arg(args, kwargs, x.dim())
    if dims is None:
        tr.fix_ann(ann, f"'{name}' reduces over channels")
        return
    keep = bool(kwargs.get("keepdim", args[2] if len(args) > 2 and isinstance(args[2], bool) else False))
    new: Ann = {}
    for d, ids in ann.items():
        if d in dims:
            tr.fix(ids, f"'{name}' reduces over channels")
            continue
        new[d if keep else d - sum(1 for r in dims if r < d)] = ids
    result = out[0] if isinstance(out, tuple) else out
    if isinstance(out, tuple) and hasattr(out, "indices"):
        result = out.values
    tr.set(result, new)


def _rule_spatial(tr: _Tracer, name, args, kwargs, out) -> None:
    x = args[0] if args else kwargs.get("input")
    ann = dict(tr.get(x) or {})
    for d in [d for d in ann if d >= 2]:
        tr.fix(ann.pop(d), f"'{name}' resamples a channel-carrying dim")
    result = out[0] if isinstance(out, tuple) else out
    tr.set(result, ann)


def _rule_softmax(tr: _Tracer, name, args, kwargs, out) -> None:
    x = args[0]
    ann = dict(tr.get(x) or {})
    d = kwargs.get("dim", args[1] if len(args) > 1 else None)
    if d is None:
        tr.fix_ann(ann, f"'{name}' without dim")
        return
    d = _norm_dim(d, x.dim())
    if d in ann:
        tr.fix(ann[d], f"'{name}' normalises over channels")
    tr.set(out, ann)


def _reshape_groups(old: Sequence[int], new: Sequence[int]) -> list[tuple[list[int], list[int]]] | None:
    """Pair up runs of dims whose sizes multiply to the same number."""
    groups, i, j = [], 0, 0
    while i < len(old) or j < len(new):
        gi, gj = [], []
        pi = pj = 1
        if i < len(old):
            gi.append(i)
            pi = old[i]
            i += 1
        if j < len(new):
            gj.append(j)
            pj = new[j]
            j += 1
        while pi != pj:
            if pi < pj and i < len(old):
                gi.append(i)
                pi *= old[i]
                i += 1
            elif j < len(new):
                gj.append(j)
                pj *= new[j]
                j += 1
            else:
                return None
        groups.append((gi, gj))
    return groups


def _reshape_ann(tr: _Tracer, name: str, x: torch.Tensor, out: torch.Tensor, ann: Ann) -> None:
    if not ann:
        return
    old, new = list(x.shape), list(out.shape)
    groups = _reshape_groups(old, new)
    if groups is None:
        tr.fix_ann(ann, f"'{name}' reshapes channels in a way that is not tracked")
        return
    result: Ann = {}
    for gi, gj in groups:
        tracked = [d for d in gi if d in ann]
        if not tracked:
            continue
        big_new = [d for d in gj if new[d] > 1]
        if len(tracked) == 1 and len(big_new) <= 1:
            d = tracked[0]
            size = math.prod(old[k] for k in gi)
            if not big_new:
                tr.fix(ann[d], f"'{name}' collapses a channel dim")
                continue
            # positions of the merged dim, in row-major order, take the tracked dim's variable
            shape = [old[k] for k in gi]
            expanded = ann[d].reshape([old[k] if k == d else 1 for k in gi]).expand(shape).reshape(size)
            result[big_new[0]] = expanded
            continue
        for d in tracked:
            tr.fix(ann[d], f"'{name}' splits or merges channel dims (sizes may be hard-coded)")
    tr.set(out, result)


def _rule_reshape(tr: _Tracer, name, args, kwargs, out) -> None:
    x = args[0]
    if not isinstance(out, torch.Tensor):
        tr.unknown_op(name, [x])
        return
    _reshape_ann(tr, name, x, out, tr.get(x) or {})


def _rule_permute(tr: _Tracer, name, args, kwargs, out) -> None:
    x = args[0]
    ann = tr.get(x) or {}
    nd = x.dim()
    if name in ("permute",):
        order = args[1:] if len(args) > 2 or (len(args) == 2 and isinstance(args[1], int)) else args[1]
        order = kwargs.get("dims", order)
        order = [_norm_dim(int(o), nd) for o in order]
    elif name in ("transpose", "transpose_", "swapaxes", "swapdims"):
        a = _norm_dim(args[1] if len(args) > 1 else kwargs["dim0"], nd)
        b = _norm_dim(args[2] if len(args) > 2 else kwargs["dim1"], nd)
        order = list(range(nd))
        order[a], order[b] = order[b], order[a]
    elif name in ("t", "t_"):
        order = list(range(nd))[::-1]
    elif name == "movedim":
        src = args[1] if len(args) > 1 else kwargs["source"]
        dst = args[2] if len(args) > 2 else kwargs["destination"]
        src = [src] if isinstance(src, int) else list(src)
        dst = [dst] if isinstance(dst, int) else list(dst)
        src = [_norm_dim(s, nd) for s in src]
        dst = [_norm_dim(s, nd) for s in dst]
        rest = [d for d in range(nd) if d not in src]
        order = [None] * nd
        for s, d in zip(src, dst):
            order[d] = s
        it = iter(rest)
        order = [o if o is not None else next(it) for o in order]
    else:
        tr.unknown_op(name, [x])
        return
    tr.set(out, {new: ann[old] for new, old in enumerate(order) if old in ann})


def _rule_unsqueeze(tr: _Tracer, name, args, kwargs, out) -> None:
    _reshape_ann(tr, name, args[0], out, tr.get(args[0]) or {})


def _rule_expand(tr: _Tracer, name, args, kwargs, out) -> None:
    x = args[0]
    ann = tr.get(x) or {}
    shift = out.dim() - x.dim()
    result = {}
    for d, ids in ann.items():
        if out.shape[d + shift] != x.shape[d]:
            tr.fix(ids, f"'{name}' repeats channels")
            continue
        result[d + shift] = ids
    tr.set(out, result)


def _rule_cat(tr: _Tracer, name, args, kwargs, out) -> None:
    tensors = list(args[0] if args else kwargs["tensors"])
    dim = kwargs.get("dim", args[1] if len(args) > 1 else 0)
    dim = _norm_dim(dim, out.dim())
    if name == "stack":
        stacked = [t.unsqueeze(dim) for t in tensors]
        anns = [{(d if d < dim else d + 1): i for d, i in (tr.get(t) or {}).items()} for t in tensors]
        for s, a in zip(stacked, anns):
            tr.set(s, a)
        tensors = stacked
    parts: list[Ids] = []
    for t in tensors:
        ids = (tr.get(t) or {}).get(dim)
        if ids is None:
            ids = tr.fresh(t.shape[dim])
            tr.fix(ids, f"'{name}' joins channels that carry no variables")
        parts.append(ids)
    others = []
    for t in tensors:
        ann = {d: i for d, i in (tr.get(t) or {}).items() if d != dim}
        proxy = torch.empty([1 if d == dim else s for d, s in enumerate(t.shape)], device="meta")
        tr.set(proxy, ann)
        others.append(proxy)
    shape = [1 if d == dim else s for d, s in enumerate(out.shape)]
    result = _broadcast_join(tr, others, shape, f"'{name}' with an operand that carries no channel variables")
    if name != "stack":
        result[dim] = torch.cat(parts)
    else:
        for p in parts:
            tr.fix(p, "'stack' along a channel dim")
    tr.set(out, result)


def _rule_split(tr: _Tracer, name, args, kwargs, out) -> None:
    x = args[0]
    ann = tr.get(x) or {}
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    if name == "unbind":
        dim = _norm_dim(kwargs.get("dim", args[1] if len(args) > 1 else 0), x.dim())
        if dim in ann:
            tr.fix(ann[dim], "'unbind' over channels")
        for o in outs:
            tr.set(o, {(d if d < dim else d - 1): i for d, i in ann.items() if d != dim})
        return
    if name == "narrow":
        dim = _norm_dim(args[1], x.dim())
        start = int(args[2])
        offsets = [(start, start + out.shape[dim])]
    else:
        dim = kwargs.get("dim", args[2] if len(args) > 2 else 0)
        dim = _norm_dim(dim, x.dim())
        offsets, pos = [], 0
        for o in outs:
            offsets.append((pos, pos + o.shape[dim]))
            pos += o.shape[dim]
    for o, (a, b) in zip(outs, offsets):
        tr.set(o, {d: (i[a:b] if d == dim else i) for d, i in ann.items()})


def _rule_getitem(tr: _Tracer, name, args, kwargs, out) -> None:
    x, index = args[0], args[1]
    if not isinstance(index, tuple):
        index = (index,)
    if any(isinstance(i, (torch.Tensor, list)) or (i is not None and not isinstance(i, (int, slice, type(...))))
           for i in index):
        tr.unknown_op("__getitem__ (advanced index)", [x])
        return
    ann = tr.get(x) or {}
    n_real = sum(1 for i in index if i is not None and i is not ...)
    expanded: list = []
    for i in index:
        if i is ...:
            expanded.extend([slice(None)] * (x.dim() - n_real))
        else:
            expanded.append(i)
    expanded.extend([slice(None)] * (x.dim() - sum(1 for i in expanded if i is not None)))
    result: Ann = {}
    src = dst = 0
    for i in expanded:
        if i is None:
            dst += 1
            continue
        ids = ann.get(src)
        if isinstance(i, int):
            if ids is not None:
                tr.fix(ids, "indexing a single channel")
            src += 1
            continue
        if ids is not None:
            result[dst] = ids[i]
        src += 1
        dst += 1
    tr.set(out, result)


def _rule_matmul(tr: _Tracer, name, args, kwargs, out) -> None:
    a, b = args[0], args[1]
    if a.dim() < 2 or b.dim() < 2:
        tr.unknown_op(name, [a, b])
        return
    aa, ab = tr.get(a) or {}, tr.get(b) or {}
    ka, kb = aa.get(a.dim() - 1), ab.get(b.dim() - 2)
    why = f"'{name}' contracts channels with an operand that carries no variables"
    if ka is not None and kb is not None:
        tr.couple(ka, kb)
    elif ka is not None:
        tr.fix(ka, why)
    elif kb is not None:
        tr.fix(kb, why)
    nd = out.dim()
    batch_a = torch.empty(list(a.shape[:-2]) + [1, 1], device="meta")
    batch_b = torch.empty(list(b.shape[:-2]) + [1, 1], device="meta")
    tr.set(batch_a, {d: i for d, i in aa.items() if d < a.dim() - 2})
    tr.set(batch_b, {d: i for d, i in ab.items() if d < b.dim() - 2})
    result = _broadcast_join(tr, [batch_a, batch_b], list(out.shape[:-2]) + [1, 1], why)
    if a.dim() - 2 in aa:
        result[nd - 2] = aa[a.dim() - 2]
    if b.dim() - 1 in ab:
        result[nd - 1] = ab[b.dim() - 1]
    tr.set(out, result)


def _rule_linear(tr: _Tracer, name, args, kwargs, out) -> None:
    x, w = args[0], args[1] if len(args) > 1 else kwargs["weight"]
    bias = args[2] if len(args) > 2 else kwargs.get("bias")
    ax, aw = tr.get(x) or {}, tr.get(w) or {}
    last = x.dim() - 1
    in_ids, w_in = ax.get(last), aw.get(1)
    if in_ids is not None and w_in is not None:
        tr.couple(in_ids, w_in)
    elif in_ids is not None or w_in is not None:
        tr.fix(in_ids if in_ids is not None else w_in, "'linear' with a weight that carries no variables")
    out_ids = aw.get(0)
    if bias is not None:
        ab = tr.get(bias) or {}
        if out_ids is not None and 0 in ab:
            tr.couple(out_ids, ab[0])
    result = {d: i for d, i in ax.items() if d != last}
    if out_ids is not None:
        result[last] = out_ids
    tr.set(out, result)


def _rule_sdpa(tr: _Tracer, name, args, kwargs, out) -> None:
    q, k, v = args[0], args[1], args[2]
    aq, ak, av = tr.get(q) or {}, tr.get(k) or {}, tr.get(v) or {}
    last = q.dim() - 1
    if last in aq and last in ak:
        tr.couple(aq[last], ak[last])
    for ann in (aq, ak, av):
        for d, ids in ann.items():
            if d != last:
                tr.fix(ids, "attention over a channel-carrying dim")
    for ann, other in ((aq, ak), (ak, aq)):
        if last in ann and last not in other:
            tr.fix(ann[last], "attention with a key or query that carries no variables")
    result = {last: av[last]} if last in av else {}
    tr.set(out, result)


def _rule_pad(tr: _Tracer, name, args, kwargs, out) -> None:
    x = args[0]
    pad = args[1] if len(args) > 1 else kwargs["pad"]
    ann = dict(tr.get(x) or {})
    for k in range(len(pad) // 2):
        d = x.dim() - 1 - k
        if d in ann and (pad[2 * k] or pad[2 * k + 1]):
            tr.fix(ann.pop(d), "'pad' pads a channel dim")
    tr.set(out, ann)


def _rule_roll(tr: _Tracer, name, args, kwargs, out) -> None:
    x = args[0]
    dims = kwargs.get("dims", args[2] if len(args) > 2 else None)
    ann = dict(tr.get(x) or {})
    if dims is None:
        tr.fix_ann(ann, "'roll' over all dims")
        return
    dims = [dims] if isinstance(dims, int) else list(dims)
    for d in dims:
        d = _norm_dim(d, x.dim())
        if d in ann:
            tr.fix(ann[d], "'roll' along a channel dim")
    tr.set(out, ann)


def _rule_layer_norm(tr: _Tracer, name, args, kwargs, out) -> None:
    x = args[0]
    shape = args[1] if len(args) > 1 else kwargs["normalized_shape"]
    ann = tr.get(x) or {}
    for d in range(x.dim() - len(shape), x.dim()):
        if d in ann:
            tr.fix(ann[d], "'layer_norm' normalises over these channels")
    for t in list(args[2:]) + [kwargs.get("weight"), kwargs.get("bias")]:
        tr.fix_ann(tr.get(t), "'layer_norm' normalises over these channels")
    tr.set(out, dict(ann))


_RULES = {
    "view": _rule_reshape, "reshape": _rule_reshape, "flatten": _rule_reshape, "unflatten": _rule_reshape,
    "view_as": _rule_reshape, "reshape_as": _rule_reshape, "squeeze": _rule_unsqueeze, "unsqueeze": _rule_unsqueeze,
    "squeeze_": _rule_unsqueeze, "unsqueeze_": _rule_unsqueeze,
    "permute": _rule_permute, "transpose": _rule_permute, "transpose_": _rule_permute, "t": _rule_permute,
    "swapaxes": _rule_permute, "swapdims": _rule_permute, "movedim": _rule_permute,
    "expand": _rule_expand, "expand_as": _rule_expand, "broadcast_to": _rule_expand,
    "cat": _rule_cat, "concat": _rule_cat, "concatenate": _rule_cat, "stack": _rule_cat,
    "split": _rule_split, "chunk": _rule_split, "tensor_split": _rule_split, "split_with_sizes": _rule_split,
    "unbind": _rule_split, "narrow": _rule_split,
    "__getitem__": _rule_getitem,
    "matmul": _rule_matmul, "bmm": _rule_matmul, "mm": _rule_matmul, "__matmul__": _rule_matmul,
    "linear": _rule_linear, "scaled_dot_product_attention": _rule_sdpa,
    "softmax": _rule_softmax, "log_softmax": _rule_softmax, "pad": _rule_pad, "roll": _rule_roll,
    "layer_norm": _rule_layer_norm,
}


class _Recorder(TorchFunctionMode):
    def __init__(self, tracer: _Tracer) -> None:
        super().__init__()
        self.tracer = tracer

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.tracer.depth == 0:
            self.tracer.on_function(func, args, kwargs, out)
        return out


def call_with(model: nn.Module, example: Any) -> Any:
    """Call ``model`` with example inputs: a tensor, a tuple of positional inputs, or a
    dict of keyword arguments."""
    if isinstance(example, Mapping):
        return model(**example)
    if isinstance(example, tuple):
        return model(*example)
    return model(example)


def trace_channels(
    model: nn.Module, example: Any, warn: bool = True, record_inputs: bool = False, free_outputs: Any = ()
) -> ChannelGraph:
    """Run ``model`` once on ``example`` and build its :class:`ChannelGraph`.

    The model's modes are restored afterwards, gradients are not recorded and nothing
    is printed; ops that are not understood make the channels they touch unprunable
    and are named in one warning.

    Args:
        record_inputs: also keep, for every Conv and Linear, the per-channel minimum,
            maximum and mean of its input (``graph.input_stats``), and the output
            (``graph.output``): what the speedup engine needs to fold constants.
        free_outputs: names of layers whose output is a model output and may still be
            pruned (the user named them); every other model output is fixed.
    """
    tracer = _Tracer(model)
    tracer.record_inputs = record_inputs
    modes = {m: m.training for m in model.modules()}
    handles = []

    def pre(module, args, kwargs):
        tracer.depth += 1

    def post(module, args, kwargs, out):
        if tracer.depth == 1:  # still "inside": the rule's own tensor ops are not recorded
            tracer.on_module(module, args, kwargs, out)
        tracer.depth -= 1

    for m in model.modules():
        if isinstance(m, LEAF_TYPES):
            handles.append(m.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(m.register_forward_hook(post, with_kwargs=True))
    try:
        model.eval()
        with torch.no_grad(), _Recorder(tracer):
            outputs = call_with(model, example)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    graph = tracer.finish(outputs, free_outputs)
    if warn and graph.unknown_ops:
        ops = ", ".join(f"{k} (x{v})" for k, v in sorted(graph.unknown_ops.items()))
        warnings.warn(
            f"secateurs does not know these ops, so the channels they touch will not be pruned: {ops}",
            stacklevel=2,
        )
    return graph
