"""Op rules: how each tensor op moves, joins or fixes channel variables.

Every rule is one entry of :data:`OP_RULES`, registered with the names of the torch
functions and tensor methods it handles (``@op_rule("cat", "cat", "concat", ...)``).
A rule gets the tracer, the function's name, its arguments and its result, and
annotates the result (:meth:`Tracer.set`), couples variables (:meth:`Tracer.couple`)
or fixes them (:meth:`Tracer.fix`). An op with no rule fixes the channels it touches
and is named in one warning. Adding an op is one entry here and one case in
``tests/test_equivalence.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch

from .._errors import did_you_mean

if TYPE_CHECKING:
    from .trace import Ann, Ids, Tracer

Rule = Callable[["Tracer", str, tuple, dict, Any], None]


class RuleRegistry:
    """Rule name -> rule, and torch function name -> rule name."""

    def __init__(self) -> None:
        self._rules: dict[str, Rule] = {}
        self._by_op: dict[str, str] = {}

    def register(self, name: str, *ops: str) -> Callable[[Rule], Rule]:
        def decorate(fn: Rule) -> Rule:
            if name in self._rules:
                raise RuntimeError(f"op rule {name!r} is registered twice.")
            self._rules[name] = fn
            for op in ops:
                if op in self._by_op:
                    raise RuntimeError(f"op {op!r} has two rules: {self._by_op[op]!r} and {name!r}.")
                self._by_op[op] = name
            return fn

        return decorate

    def for_op(self, op: str) -> tuple[str, Rule] | None:
        """(rule name, rule) for a torch function name, or None when no rule handles it."""
        name = self._by_op.get(op)
        return None if name is None else (name, self._rules[name])

    def get(self, name: str) -> Rule:
        if name not in self._rules:
            raise KeyError(f"unknown op rule {name!r}{did_you_mean(name, self._rules)}.")
        return self._rules[name]

    def ops(self, name: str) -> list[str]:
        """The torch function names the rule ``name`` handles."""
        return [op for op, r in self._by_op.items() if r == name]

    def names(self) -> list[str]:
        return list(self._rules)

    def __iter__(self) -> Iterator[str]:
        return iter(self._rules)


OP_RULES = RuleRegistry()
op_rule = OP_RULES.register


def norm_dim(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


def _first_tensor(args: tuple, kwargs: dict) -> torch.Tensor | None:
    for a in list(args) + list(kwargs.values()):
        if isinstance(a, torch.Tensor):
            return a
    return None


def _arg(args: tuple, kwargs: dict, pos: int, key: str, default: Any = None) -> Any:
    return args[pos] if len(args) > pos else kwargs.get(key, default)


# -- element-wise -----------------------------------------------------------------------

@op_rule(
    "unary",
    "relu", "relu_", "relu6", "gelu", "silu", "silu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "hardswish",
    "hardswish_", "hardsigmoid", "hardsigmoid_", "hardtanh", "hardtanh_", "leaky_relu", "leaky_relu_", "elu",
    "elu_", "selu", "celu", "softplus", "mish", "softsign", "tanhshrink", "logsigmoid", "dropout", "dropout_",
    "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout", "clone", "contiguous", "to",
    "float", "double", "half", "bfloat16", "type", "type_as", "detach", "neg", "neg_", "abs", "exp", "log",
    "sqrt", "rsqrt", "square", "clamp", "clamp_", "clamp_min", "clamp_max", "clip", "erf", "sin", "cos",
    "reciprocal", "sign", "relu6_", "threshold", "threshold_", "requires_grad_", "__neg__", "__abs__",
    "nan_to_num", "exp_", "cpu", "cuda", "gelu_", "mul_scalar", "sigmoid_mul", "erf_", "hardshrink", "softshrink",
)
def rule_unary(tr: Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    x = _first_tensor(args, kwargs)
    if isinstance(out, torch.Tensor) and out.shape == x.shape:
        tr.set(out, dict(tr.get(x) or {}))
    else:
        tr.unknown_op(name, [x])


def broadcast_join(tr: Tracer, tensors: Sequence[torch.Tensor], out_shape: Sequence[int], why: str) -> Ann:
    """Join the channel variables of broadcast operands, aligned from the right.

    An operand that spans a channel dim without carrying its variables (a constant
    tensor, say) would be cut wrongly by pruning: those channels are fixed (``why``).
    """
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


@op_rule(
    "binary",
    "add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "true_divide", "floor_divide", "maximum",
    "minimum", "pow", "pow_", "fmod", "remainder", "__add__", "__radd__", "__iadd__", "__sub__", "__rsub__",
    "__isub__", "__mul__", "__rmul__", "__imul__", "__truediv__", "__rtruediv__", "__itruediv__", "__pow__",
    "__rpow__", "where", "eq", "ne", "lt", "le", "gt", "ge", "__eq__", "__ne__", "__lt__", "__le__", "__gt__",
    "__ge__", "addcmul", "addcdiv", "lerp", "masked_fill", "masked_fill_", "copysign", "rsub", "__and__", "__or__",
)
def rule_binary(tr: Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    tensors = [t for t in list(args) + list(kwargs.values()) if isinstance(t, torch.Tensor)]
    if not isinstance(out, torch.Tensor):
        tr.unknown_op(name, tensors)
        return
    tr.set(out, broadcast_join(tr, tensors, out.shape, f"'{name}' with an operand that carries no channel variables"))


def _dims_arg(args: tuple, kwargs: dict, ndim: int, pos: int = 1, key: str = "dim") -> list[int] | None:
    d = _arg(args, kwargs, pos, key)
    if d is None:
        return None
    if isinstance(d, int):
        d = [d]
    return [norm_dim(int(x), ndim) for x in d]


@op_rule("reduce", "mean", "sum", "amax", "amin", "max", "min", "std", "var", "norm", "logsumexp", "prod",
         "argmax", "argmin", "all", "any", "median", "nansum", "nanmean")
def rule_reduce(tr: Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    x = args[0]
    if len(args) > 1 and isinstance(args[1], torch.Tensor):  # torch.max(a, b) is element-wise
        rule_binary(tr, name, args, kwargs, out)
        return
    ann = tr.get(x) or {}
    dims = _dims_arg(args, kwargs, x.dim())
    if dims is None:
        tr.fix_ann(ann, f"'{name}' reduces over channels")
        return
    keep = bool(kwargs.get("keepdim", args[2] if len(args) > 2 and isinstance(args[2], bool) else False))
    new: Ann = {}
    result = out.values if hasattr(out, "values") and isinstance(out, tuple) else out
    for d, ids in ann.items():
        if d in dims:
            why = f"'{name}' reduces over channels"
            if result is out:
                tr.fix_when_read(result, ids, why)
            else:
                tr.fix(ids, why)
            continue
        new[d if keep else d - sum(1 for r in dims if r < d)] = ids
    tr.set(result, new)


@op_rule("spatial", "max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
         "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d",
         "adaptive_max_pool2d", "adaptive_max_pool3d", "interpolate", "upsample", "upsample_nearest",
         "upsample_bilinear", "lp_pool2d", "max_pool2d_with_indices", "max_pool1d_with_indices",
         "max_pool3d_with_indices", "adaptive_max_pool2d_with_indices", "fractional_max_pool2d",
         "pixel_shuffle_spatial")
def rule_spatial(tr: Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    """Pooling and resampling act on dims 2+ of an (N, C, ...) tensor, channel by channel."""
    x = args[0] if args else kwargs.get("input")
    ann = dict(tr.get(x) or {})
    batched = x.dim() >= 3
    for d in [d for d in ann if d >= (2 if batched else 1)]:
        tr.fix(ann.pop(d), f"'{name}' resamples a channel-carrying dim")
    tr.set(out[0] if isinstance(out, tuple) else out, ann)


@op_rule("softmax", "softmax", "log_softmax")
def rule_softmax(tr: Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    x = args[0]
    ann = dict(tr.get(x) or {})
    d = _arg(args, kwargs, 1, "dim")
    if d is None:
        tr.fix_ann(ann, f"'{name}' without dim")
        return
    d = norm_dim(d, x.dim())
    if d in ann:
        tr.fix(ann[d], f"'{name}' normalises over channels")
    tr.set(out, ann)


# -- shape ------------------------------------------------------------------------------

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


def reshape_ann(tr: Tracer, name: str, x: torch.Tensor, out: torch.Tensor, ann: Ann,
                requested: Sequence[int] | None = None) -> None:
    """Carry variables through a reshape: a channel dim merged with the dims after it
    (flatten into a Linear, heads merged back) gives each channel a block of positions; a
    channel dim split into ``(H, D)`` or ``(O, H, D)`` gives its ``H`` dim one variable per
    head, coupled with the head's channels (:meth:`Tracer.split_heads`), and leaves ``D``
    and ``O`` untracked (they never change); any other split or merge is fixed.

    Args:
        requested: the sizes the op was given (``-1`` included), when known: a head count
            given as a number must be an attribute the speedup can change.
    """
    if not ann:
        return
    old, new = list(x.shape), list(out.shape)
    given = list(requested) if requested is not None and len(requested) == len(new) else None
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
            shape = [old[k] for k in gi]
            expanded = ann[d].reshape([old[k] if k == d else 1 for k in gi]).expand(shape).reshape(size)
            result[big_new[0]] = expanded
            if given is not None and given[big_new[0]] >= 0:
                tr.given_for_heads(name, given[big_new[0]], ann[d])
            continue
        if len(tracked) == 1 and len(gi) == 1 and len(big_new) in (2, 3):
            h_dim, d_dim = big_new[-2], big_new[-1]
            literal = given is None or given[h_dim] != -1
            width_given = given is None or given[d_dim] != -1
            outer = new[big_new[0]] if len(big_new) == 3 else 1
            result[h_dim] = tr.split_heads(name, ann[tracked[0]], outer, new[h_dim], new[d_dim], literal,
                                           width_given)
            continue
        for d in tracked:
            tr.fix(ann[d], f"'{name}' splits or merges channel dims (sizes may be hard-coded)")
    tr.set(out, result)


@op_rule("reshape", "view", "reshape", "flatten", "unflatten", "view_as", "reshape_as")
def rule_reshape(tr: Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    x = args[0]
    if not isinstance(out, torch.Tensor):
        tr.unknown_op(name, [x])
        return
    reshape_ann(tr, name, x, out, tr.get(x) or {}, _requested_shape(name, args, kwargs, x.dim()))


def _requested_shape(name: str, args: tuple, kwargs: dict, ndim: int) -> list[int] | None:
    """The new shape as the op was asked for it (``-1`` kept), or None when not given as numbers."""
    if name in ("view", "reshape"):
        sizes = args[1] if len(args) == 2 and not isinstance(args[1], int) else args[1:]
        sizes = kwargs.get("shape", kwargs.get("size", sizes))
    elif name == "unflatten":
        dim, inner = norm_dim(int(_arg(args, kwargs, 1, "dim")), ndim), _arg(args, kwargs, 2, "sizes")
        sizes = [-2] * dim + list(inner) + [-2] * (ndim - dim - 1)  # -2: a dim the op keeps
    else:
        return None
    if isinstance(sizes, torch.dtype) or not all(isinstance(v, int) for v in sizes):
        return None
    return [int(v) for v in sizes]


@op_rule("unsqueeze", "squeeze", "unsqueeze", "squeeze_", "unsqueeze_")
def rule_unsqueeze(tr: Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    reshape_ann(tr, name, args[0], out, tr.get(args[0]) or {})


@op_rule("permute", "permute", "transpose", "transpose_", "t", "t_", "swapaxes", "swapdims", "movedim", "moveaxis")
def rule_permute(tr: Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    x = args[0]
    ann = tr.get(x) or {}
    nd = x.dim()
    if name == "permute":
        order = args[1:] if len(args) > 2 or (len(args) == 2 and isinstance(args[1], int)) else args[1]
        order = [norm_dim(int(o), nd) for o in kwargs.get("dims", order)]
    elif name in ("transpose", "transpose_", "swapaxes", "swapdims"):
        a = norm_dim(_arg(args, kwargs, 1, "dim0"), nd)
        b = norm_dim(_arg(args, kwargs, 2, "dim1"), nd)
        order = list(range(nd))
        order[a], order[b] = order[b], order[a]
    elif name in ("t", "t_"):
        order = list(range(nd))[::-1]
    else:  # movedim / moveaxis
        src, dst = _arg(args, kwargs, 1, "source"), _arg(args, kwargs, 2, "destination")
        src = [norm_dim(s, nd) for s in ([src] if isinstance(src, int) else src)]
        dst = [norm_dim(s, nd) for s in ([dst] if isinstance(dst, int) else dst)]
        rest = iter([d for d in range(nd) if d not in src])
        placed = dict(zip(dst, src))
        order = [placed[d] if d in placed else next(rest) for d in range(nd)]
    tr.set(out, {new: ann[old] for new, old in enumerate(order) if old in ann})


@op_rule("expand", "expand", "expand_as", "broadcast_to", "repeat_interleave")
def rule_expand(tr: Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    if name == "repeat_interleave":
        _repeat_interleave(tr, name, args, kwargs, out)
        return
    x = args[0]
    shift = out.dim() - x.dim()
    sizes = args[1] if len(args) == 2 and not isinstance(args[1], (int, torch.Tensor)) else args[1:]
    given = list(sizes) if name == "expand" and all(type(v) is int for v in sizes) else []
    result = {}
    for d, ids in (tr.get(x) or {}).items():
        if out.shape[d + shift] != x.shape[d]:
            tr.fix(ids, f"'{name}' repeats channels")
            continue
        result[d + shift] = ids
        if len(given) == out.dim() and given[d + shift] >= 0:  # a head count given to expand must follow
            tr.given_for_heads(name, given[d + shift], ids)
    tr.set(out, result)


def _join_others(tr: Tracer, tensors: Sequence[torch.Tensor], dim: int, out_shape: Sequence[int], why: str) -> Ann:
    """Couple the operands' variables on every dim but ``dim`` (they are joined element-wise there)."""
    proxies = []
    for t in tensors:
        proxy = torch.empty([1 if d == dim else s for d, s in enumerate(t.shape)], device="meta")
        tr.set(proxy, {d: i for d, i in (tr.get(t) or {}).items() if d != dim})
        proxies.append(proxy)
    return broadcast_join(tr, proxies, [1 if d == dim else s for d, s in enumerate(out_shape)], why)


@op_rule("cat", "cat", "concat", "concatenate")
def rule_cat(tr: Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    tensors = list(_arg(args, kwargs, 0, "tensors"))
    dim = norm_dim(_arg(args, kwargs, 1, "dim", 0), out.dim())
    parts: list[Ids] = []
    for t in tensors:
        ids = (tr.get(t) or {}).get(dim)
        if ids is None:
            ids = tr.fresh(t.shape[dim])
            tr.fix(ids, f"'{name}' joins channels that carry no variables")
        parts.append(ids)
    result = _join_others(tr, tensors, dim, out.shape, f"'{name}' with an operand that carries no channel variables")
    result[dim] = torch.cat(parts)
    tr.set(out, result)


@op_rule("stack", "stack", "hstack", "vstack")
def rule_stack(tr: Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    tensors = list(_arg(args, kwargs, 0, "tensors"))
    if name != "stack":
        tr.unknown_op(name, tensors)
        return
    dim = norm_dim(_arg(args, kwargs, 1, "dim", 0), out.dim())
    lifted = []
    for t in tensors:  # each operand as if unsqueezed at ``dim``: the operands are joined element-wise
        proxy = torch.empty([1 if d == dim else s for d, s in enumerate(out.shape)], device="meta")
        tr.set(proxy, {(d if d < dim else d + 1): i for d, i in (tr.get(t) or {}).items()})
        lifted.append(proxy)
    tr.set(out, _join_others(tr, lifted, dim, out.shape, f"'{name}' with an operand that carries no variables"))


def _fix_dim(tr: Tracer, ann: Ann, dim: int, why: str) -> Ann:
    if dim in ann:
        tr.fix(ann[dim], why)
    return {d: i for d, i in ann.items() if d != dim}


@op_rule("split", "split", "split_with_sizes", "tensor_split", "hsplit", "vsplit")
def rule_split(tr: Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    """Split sizes are numbers the model computed or stored: after pruning they would
    cut the channels in the wrong places, so a split channel dim is fixed."""
    x = args[0]
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    dim = norm_dim(_arg(args, kwargs, 2, "dim", 0), x.dim())
    ann = tr.get(x) or {}
    why = f"'{name}' splits channels at sizes the model holds (they would not follow pruning)"
    size = _arg(args, kwargs, 1, "split_size_or_sections", kwargs.get("split_size"))
    ids = ann.get(dim)
    if name == "split" and type(size) is int and ids is not None and {o.shape[dim] for o in outs} == {size}:
        # Equal parts of a size the module may hold as an attribute (GPT-2's split_size): the
        # tracer keeps them when it does, and the speedup changes it (Tracer._check_splits).
        parts = [ids[k * size:(k + 1) * size] for k in range(len(outs))]
        tr.splits.append((tr.current, size, parts, ids, why))
        for o, part in zip(outs, parts):
            tr.set(o, {**ann, dim: part})
        return
    rest = _fix_dim(tr, ann, dim, why)
    for o in outs:
        tr.set(o, {**rest, **({dim: tr.fixed_fresh(o.shape[dim], why)} if dim in ann else {})})


def _repeat_interleave(tr: Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    """``repeat_interleave(x, r, dim)`` with a number ``r``: each position of ``dim`` is
    repeated ``r`` times, its variable with it (grouped-query attention's k/v heads)."""
    x, reps, dim = args[0], _arg(args, kwargs, 1, "repeats"), _arg(args, kwargs, 2, "dim")
    if not isinstance(x, torch.Tensor) or type(reps) is not int or dim is None:
        tr.unknown_op(f"{name} (repeats that are not one number, or no dim)", [x])
        return
    dim = norm_dim(int(dim), x.dim())
    ann = dict(tr.get(x) or {})
    if dim in ann:
        ann[dim] = ann[dim].repeat_interleave(reps)
    tr.set(out, ann)


@op_rule("chunk", "chunk")
def rule_chunk(tr: Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    """``chunk(n)`` cuts at ``size / n``: exact after pruning when every chunk loses the
    same channel positions, so the chunks' variables are coupled position by position."""
    x = args[0]
    outs = list(out)
    dim = norm_dim(_arg(args, kwargs, 2, "dim", 0), x.dim())
    ann = tr.get(x) or {}
    ids = ann.get(dim)
    sizes = {o.shape[dim] for o in outs}
    if ids is not None and len(sizes) > 1:
        _fix_dim(tr, ann, dim, f"'{name}' into chunks of unequal size")
    size = outs[0].shape[dim]
    for k, o in enumerate(outs):
        part = dict(ann)
        if ids is not None:
            part[dim] = ids[k * size:(k + 1) * size]
            if len(sizes) == 1 and k:
                tr.couple(ids[:size], part[dim])
        tr.set(o, part)


@op_rule("unbind", "unbind")
def rule_unbind(tr: Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    x = args[0]
    dim = norm_dim(_arg(args, kwargs, 1, "dim", 0), x.dim())
    rest = _fix_dim(tr, tr.get(x) or {}, dim, "'unbind' over channels")
    for o in out:
        tr.set(o, {(d if d < dim else d - 1): i for d, i in rest.items()})


@op_rule("narrow", "narrow")
def rule_narrow(tr: Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    x = args[0]
    dim = norm_dim(_arg(args, kwargs, 1, "dim"), x.dim())
    ann = tr.get(x) or {}
    why = "'narrow' takes channels at offsets the model holds (they would not follow pruning)"
    rest = _fix_dim(tr, ann, dim, why)
    tr.set(out, {**rest, **({dim: tr.fixed_fresh(out.shape[dim], why)} if dim in ann else {})})


@op_rule("getitem", "__getitem__")
def rule_getitem(tr: Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    """Full slices (``:``) keep a dim's variables; any other index on a channel dim (a
    bound, a step, an integer) uses positions the model holds, so that dim is fixed."""
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
        whole = isinstance(i, slice) and i.step in (None, 1) and range(x.shape[src])[i] == range(x.shape[src])
        if ids is not None and not whole:
            why = "indexing channels at positions the model holds (they would not follow pruning)"
            tr.fix(ids, why)
            if isinstance(i, slice):
                result[dst] = tr.fixed_fresh(len(range(x.shape[src])[i]), why)
        elif ids is not None:
            result[dst] = ids
        src += 1
        if not isinstance(i, int):
            dst += 1
    tr.set(out, result)


# -- products ---------------------------------------------------------------------------

@op_rule("matmul", "matmul", "bmm", "mm", "__matmul__", "__rmatmul__")
def rule_matmul(tr: Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    a, b = (args[1], args[0]) if name == "__rmatmul__" else (args[0], args[1])
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
    result = broadcast_join(tr, [batch_a, batch_b], list(out.shape[:-2]) + [1, 1], why)
    tr.attention_ids.extend(result.values())  # batch dims of a product: heads, each on its own
    if a.dim() - 2 in aa:
        result[nd - 2] = aa[a.dim() - 2]
    if b.dim() - 1 in ab:
        result[nd - 1] = ab[b.dim() - 1]
    tr.set(out, result)


@op_rule("functional_linear", "linear")
def rule_linear(tr: Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    """``F.linear(x, w, b)``: x's last dim is contracted with w's dim 1; w's dim 0 and
    b are the output channels."""
    x, w, bias = args[0], _arg(args, kwargs, 1, "weight"), _arg(args, kwargs, 2, "bias")
    last = x.dim() - 1
    tr.record_input(w, x, last)
    ax, aw = tr.get(x) or {}, tr.get(w) or {}
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
        elif 0 in ab or out_ids is not None:
            tr.fix(ab.get(0, out_ids), "'linear' with a bias or weight that carries no variables")
    result = {d: i for d, i in ax.items() if d != last}
    if out_ids is not None:
        result[last] = out_ids
    tr.set(out, result)


@op_rule("functional_conv", "conv1d", "conv2d", "conv3d")
def rule_conv(tr: Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    """``F.conv*d`` with a module's (or any tracked) weight, as a conv layer would."""
    from ..layers.conv import trace_conv  # the layer family holds the channel flow
    from .trace import ModuleUse

    x, w, bias = args[0], _arg(args, kwargs, 1, "weight"), _arg(args, kwargs, 2, "bias")
    groups = int(_arg(args, kwargs, 6, "groups", 1))
    cdim = x.dim() - w.dim() + 1
    tr.record_input(w, x, cdim)
    use = ModuleUse(f"'{name}'", name)
    ann = trace_conv(tr, f"'{name}'", x, cdim, x.shape[cdim], w.shape[0], groups, use,
                     lambda a: tr.bind(w, a, f"'{name}' with a weight that carries no channel variables"),
                     lambda a: tr.bind(bias, a, f"'{name}' with a bias that carries no channel variables"))
    tr.set(out, ann)


@op_rule("functional_batch_norm", "batch_norm", "instance_norm")
def rule_batch_norm(tr: Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    """``F.batch_norm(x, running_mean, running_var, weight, bias, ...)``: per channel (dim 1)."""
    x = args[0]
    cdim = 1 if x.dim() > 1 else 0
    ids = tr.channel_in(x, cdim, x.shape[cdim], f"input of '{name}' carries no channel variables")
    # F.batch_norm and F.instance_norm both take (input, running_mean, running_var, weight, bias, ...).
    for pos, key in enumerate(("running_mean", "running_var", "weight", "bias"), start=1):
        t = _arg(args, kwargs, pos, key)
        if isinstance(t, torch.Tensor):
            tr.bind(t, {0: ids}, f"'{name}' with a {key} that carries no channel variables")
    tr.set(out, {**dict(tr.get(x) or {}), cdim: ids})


@op_rule("functional_group_norm", "group_norm")
def rule_group_norm(tr: Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    from ..layers.group_norm import trace_group_norm
    from .trace import ModuleUse

    x, groups = args[0], int(_arg(args, kwargs, 1, "num_groups"))
    w, b = _arg(args, kwargs, 2, "weight"), _arg(args, kwargs, 3, "bias")

    def register(ids):
        for t in (w, b):
            if isinstance(t, torch.Tensor):
                tr.bind(t, {0: ids}, f"'{name}' with a parameter that carries no channel variables")

    tr.set(out, trace_group_norm(tr, f"'{name}'", x, groups, ModuleUse(f"'{name}'", name), register))


@op_rule("sdpa", "scaled_dot_product_attention")
def rule_sdpa(tr: Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    """``softmax(q @ k^T * scale + mask) @ v`` over the last two dims, head by head over the
    dims before them: those are joined between q, k, v and the mask like a matmul's batch
    dims (a mask of size 1 there broadcasts). With ``enable_gqa`` each k/v head serves a
    run of consecutive q heads. The sequence dims must not carry channels."""
    q, k, v = (_arg(args, kwargs, i, key) for i, key in enumerate(("query", "key", "value")))
    mask = _arg(args, kwargs, 3, "attn_mask")
    aq, ak, av = tr.get(q) or {}, tr.get(k) or {}, tr.get(v) or {}
    last = q.dim() - 1
    if last in aq and last in ak:
        tr.couple(aq[last], ak[last])
    for ann, t in ((aq, q), (ak, k), (av, v)):
        if t.dim() - 2 in ann:
            tr.fix(ann[t.dim() - 2], "attention over a channel-carrying sequence dim")
    for ann, other in ((aq, ak), (ak, aq)):
        if last in ann and last not in other:
            tr.fix(ann[last], "attention with a key or query that carries no variables")
    if isinstance(mask, torch.Tensor):
        am = tr.get(mask) or {}
        for d in (mask.dim() - 1, mask.dim() - 2):
            if d in am:
                tr.fix(am[d], "attention mask over channel-carrying dims")
    if "scale" not in kwargs and last in aq:
        # The default scale is 1 / sqrt(head dim): it would change with the pruned width.
        tr.fix(aq[last], "'scaled_dot_product_attention' scales by the width of q")
    nd = out.dim()
    batch = list(out.shape[:-2]) + [1, 1]
    proxies = []
    for t, ann in ((q, aq), (k, ak), (v, av), (mask, None)):
        if not isinstance(t, torch.Tensor):
            continue
        ann = tr.get(t) or {} if ann is None else ann
        shape = list(t.shape[:-2])
        kv_heads = t is not q and t is not mask and len(shape) and shape[-1] != q.shape[-3]
        ids = {d: i for d, i in ann.items() if d < t.dim() - 2}
        if kv_heads and kwargs.get("enable_gqa") and q.shape[-3] % shape[-1] == 0:
            rep = q.shape[-3] // shape[-1]
            shape[-1] = q.shape[-3]  # each k/v head, repeated for the q heads it serves
            if t.dim() - 3 in ids:
                ids[t.dim() - 3] = ids[t.dim() - 3].repeat_interleave(rep)
        proxy = torch.empty(shape + [1, 1], device="meta")
        tr.set(proxy, ids)
        proxies.append(proxy)
    result = broadcast_join(tr, proxies, batch, "attention with an operand or mask that carries no channel "
                                                "variables on a head dim")
    tr.attention_ids.extend(result.values())
    if last in av:
        result[nd - 1] = av[last]
    tr.set(out, result)


# -- other ------------------------------------------------------------------------------

@op_rule("pad", "pad")
def rule_pad(tr: Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    x = args[0]
    pad = _arg(args, kwargs, 1, "pad")
    ann = dict(tr.get(x) or {})
    for k in range(len(pad) // 2):
        d = x.dim() - 1 - k
        if d in ann and (pad[2 * k] or pad[2 * k + 1]):
            tr.fix(ann.pop(d), "'pad' pads a channel dim")
    tr.set(out, ann)


@op_rule("roll", "roll")
def rule_roll(tr: Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    x = args[0]
    dims = _arg(args, kwargs, 2, "dims")
    ann = dict(tr.get(x) or {})
    if dims is None or dims == ():
        tr.fix_ann(ann, "'roll' over all dims")
        return
    for d in [dims] if isinstance(dims, int) else list(dims):
        d = norm_dim(d, x.dim())
        if d in ann:
            tr.fix(ann[d], "'roll' along a channel dim")
    tr.set(out, ann)


@op_rule("functional_layer_norm", "layer_norm", "rms_norm")
def rule_layer_norm(tr: Tracer, name: str, args: tuple, kwargs: dict, out: Any) -> None:
    from ..layers.layer_norm import fix_normalised

    x = args[0]
    shape = _arg(args, kwargs, 1, "normalized_shape")
    ann = fix_normalised(tr, f"'{name}'", x, len(shape))
    for t in list(args[2:]) + [kwargs.get("weight"), kwargs.get("bias")]:
        tr.fix_ann(tr.get(t), f"'{name}' normalises over these channels")
    tr.set(out, ann)
