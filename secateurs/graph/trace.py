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

import dataclasses
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

from .._gc import no_gc
from ..layers import LAYERS, LayerFamily
from ..masks import Mask
from ..targets import module_type_name
from .rules import OP_RULES

Ids = torch.Tensor  # 1-D int64: position -> variable
Ann = dict  # dim -> Ids, for the dims of a tensor that carry channel variables
# A masked parameter is stored as "<module>.parametrizations.<name>.original"; the tracer
# knows it by its plain name "<module>.<name>". The mask buffers themselves are ours.
_PARAMETRIZED = re.compile(r"(^|\.)parametrizations\.(\w+)\.original$")
_MASK_BUFFER = re.compile(r"(^|\.)parametrizations\.\w+\.\d+\.")
_IGNORED = {"size", "dim", "numel", "__get__", "__len__", "__bool__", "__index__", "__int__", "__float__",
            "__format__", "__repr__", "__hash__", "item", "tolist", "is_floating_point", "is_contiguous",
            "element_size", "stride", "data_ptr", "__setstate__", "get_device", "_assert", "dim_order",
            "has_names", "is_complex", "storage_offset", "untyped_storage", "numpy", "__iter__", "__contains__",
            "nelement", "ndimension", "__array__", "__reduce_ex__", "__deepcopy__"}
_FACTORY = {"new_zeros", "new_ones", "new_full", "new_empty", "new_tensor", "zeros_like", "ones_like",
            "empty_like", "full_like", "rand_like", "randn_like", "randint_like"}


def plain_name(fqn: str) -> str:
    """A tensor's name as the tracer knows it: a masked parameter by its plain name."""
    return _PARAMETRIZED.sub(r"\1\2", fqn)


@dataclass
class ModuleUse:
    """What the trace saw of one module of a known layer family (first call; later calls
    are coupled to it).

    Attributes:
        plain: the module ran as one step of its family; False when it was traced op by
            op (a subclass with its own forward), its channels then read off its weight.
        input_from: the layer whose output is this module's input, if it is one directly.
        out_uses: how many ops and layers read this module's output.
    """

    name: str
    type_name: str
    in_ids: Ids | None = None
    out_ids: Ids | None = None
    family: str = ""
    plain: bool = True
    input_from: str | None = None
    out_uses: int = 0


@dataclass
class HeadSplit:
    """A channel dim split into attention heads: ``(..., H * D) -> (..., H, D)`` (or
    ``(..., O, H, D)``, a packed q/k/v projection) inside ``module``'s forward.

    Head ``h`` is one variable (``ids[h]``) coupled with the ``D`` channels it is made of, so
    it is pruned whole and ``D`` never changes. After pruning, the module's integer
    attributes equal to ``H`` and ``H * D`` (``num_heads``, ``all_head_size``) become the
    kept counts (:mod:`secateurs.speedup.apply`).

    Attributes:
        module: the innermost module (not a layer family) whose forward did the split.
        heads / head_dim: ``H`` and ``D``.
        ids: one variable per head.
        literal: the head count was passed to the reshape as a number (not ``-1``), which the
            module must hold as an attribute for the speedup to change it.
        op: the reshape op, for messages.
        width_given: the head width was passed as a number (not ``-1``): one the module
            does not hold may be computed from the head count (``C // num_heads``).
    """

    module: str
    heads: int
    head_dim: int
    ids: Ids
    literal: bool
    op: str
    width_given: bool = False


@dataclass
class SizeSite:
    """An integer of ``module`` that must follow pruning: ``value`` becomes ``per`` times
    the number of kept variables among ``ids`` (a ``split`` size, a head count)."""

    module: str
    value: int
    ids: Ids
    per: int = 1


@dataclass
class ChannelGraph:
    """Channel variables of a traced model and how they are coupled.

    Attributes:
        n_vars: number of variables.
        component: variable -> component id (coupled variables share one).
        fixed: per component, True when it must never be pruned.
        tensors: parameter/buffer fully qualified name -> {dim: ids}, for every tensor a
            pruning decision would slice.
        modules: layer name -> :class:`ModuleUse`, for every module of a known family that ran.
        reason_of: per component, the index in ``reasons`` of why it is fixed (the first
            reason seen; -1 when not fixed).
        reasons: the distinct reasons, for reports.
        unknown_ops: op name -> count, for ops that made channels unprunable.
        input_stats: layer name -> ``(3, C)`` per-input-channel minimum, maximum and mean
            (only with ``record_inputs``).
        output: the model's output on the example (only with ``record_inputs``).
        rules_used: names of the op rules and layer families that handled something.
        output_ids: output leaf path (as :func:`output_leaves` names it) -> {dim: ids}.
        example: the example input's structure and shapes (:func:`example_signature`).
        free_outputs: the ``free_outputs`` the trace was made with.
        heads: every split of channels into attention heads (:class:`HeadSplit`) whose
            heads may be pruned.
        sizes: integers of modules that follow pruning (:class:`SizeSite`), heads included.
        int_reads: module name -> the integer attributes its forward read and gave, as a
            number, to an op as the size of a dim that carries heads (a head count in a
            ``view``, a merged width, a ``split`` size): those follow pruning.
    """

    n_vars: int
    component: torch.Tensor
    fixed: torch.Tensor
    tensors: dict[str, dict[int, Ids]]
    modules: dict[str, ModuleUse]
    reason_of: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    reasons: list[str] = field(default_factory=list)
    unknown_ops: dict[str, int] = field(default_factory=dict)
    input_stats: dict[str, torch.Tensor] = field(default_factory=dict)
    output: Any = None
    rules_used: set[str] = field(default_factory=set)
    output_ids: dict[str, dict[int, Ids]] = field(default_factory=dict)
    example: Any = None
    free_outputs: tuple[str, ...] = ()
    heads: list[HeadSplit] = field(default_factory=list)
    sizes: list[SizeSite] = field(default_factory=list)
    int_reads: dict[str, set[str]] = field(default_factory=dict)

    def prunable(self, ids: Ids) -> torch.Tensor:
        """Bool per position: may this position's channel be pruned?"""
        return ~self.fixed[self.component[ids]]

    def why_fixed(self, ids: Ids) -> list[str]:
        """The distinct reasons the positions ``ids`` are fixed, for messages."""
        comps = self.component[ids]
        return sorted({self.reasons[k] for k in self.reason_of[comps[self.fixed[comps]]].unique().tolist()})


def output_leaves(obj: Any, path: str = "output") -> list[tuple[str, Any]]:
    """Every leaf of a model's output, with its path: tensors, numbers, strings, None.

    Tuples, lists, dicts (Hugging Face ``ModelOutput`` included) and dataclasses are
    walked. Any other object could hide tensors, so it is refused.

    Raises:
        TypeError: the output holds an object of another type.
    """
    if isinstance(obj, torch.Tensor) or obj is None or isinstance(obj, (bool, int, float, complex, str)):
        return [(path, obj)]
    if isinstance(obj, Mapping):
        return [leaf for k, v in obj.items() for leaf in output_leaves(v, f"{path}[{k!r}]")]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return [leaf for f in dataclasses.fields(obj) for leaf in output_leaves(getattr(obj, f.name), f"{path}.{f.name}")]
    if isinstance(obj, (list, tuple)):
        return [leaf for i, v in enumerate(obj) for leaf in output_leaves(v, f"{path}[{i}]")]
    hint = " (a Hugging Face model returns its key/value cache: add use_cache=False to the example input)" \
        if type(obj).__name__.endswith("Cache") else ""
    raise TypeError(
        f"the model returns a {type(obj).__name__} at {path}; secateurs can protect and compare only tensors, "
        "numbers and strings inside tuples, lists, dicts and dataclasses, so it cannot check that pruning keeps "
        f"this output. Return one of those from forward (or wrap the model so that it does){hint}."
    )


class Tracer:
    """State of one trace: variables, couplings, fixed variables, tensor annotations.

    Op rules (:mod:`secateurs.graph.rules`) and layer families (:mod:`secateurs.layers`)
    drive it through :meth:`get`, :meth:`set`, :meth:`fresh`, :meth:`couple`,
    :meth:`fix`, :meth:`bind` and :meth:`module_param`.
    """

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
        self.rules_used: set[str] = set()
        self.uses: Counter[int] = Counter()  # tensor id -> how many ops and layers read it
        self.made_by: dict[int, str] = {}  # tensor id -> the layer that returned it
        self.out_key: dict[str, int] = {}
        self.stats: dict[str, torch.Tensor] | None = None  # per-layer input statistics, when recorded
        self.masked_from: dict[int, torch.Tensor] = {}  # id of a masked weight -> its stored parameter
        named = list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False))
        self.param_names = {id(t): plain_name(n) for n, t in named if not _MASK_BUFFER.search(n)}
        self.module_names = {id(m): n for n, m in model.named_modules(remove_duplicate=False)}
        self.keep_alive: list[Any] = []
        self.stack: list[str] = []  # the modules (not layer families) whose forward is running
        self.reads: dict[int, set[str]] = {}  # id of a module -> integer attributes read from it
        self.heads: list[HeadSplit] = []
        self.attention_ids: list[Ids] = []  # variables of dims an attention product treats as heads
        self.splits: list[tuple[str, int, list[Ids], Ids, str]] = []  # module, size, parts, all ids, why
        self.pending: dict[int, tuple[torch.Tensor, list[tuple[Ids, str]]]] = {}  # fixed once the tensor is read
        self.head_sizes: list[tuple[str, int, Ids, str]] = []  # module, a number given for heads, their ids, op
        self.shape_sizes: dict[str, set[int]] = {}  # module -> head counts it read off tensor shapes
        self._by_name: tuple[dict[str, nn.Module], dict[str, set[str]]] | None = None  # for finish()

    # -- variables -----------------------------------------------------------------------
    def fresh(self, n: int) -> Ids:
        ids = torch.arange(self.n, self.n + n)
        self.n += n
        return ids

    def fixed_fresh(self, n: int, why: str) -> Ids:
        ids = self.fresh(n)
        self.fix(ids, why)
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

    def fix_when_read(self, t: Any, ids: Ids, why: str) -> None:
        """Fix ``ids`` as soon as ``t`` is read by an op, a layer or the model's output: a
        value nobody reads (attention weights averaged over heads and thrown away) cannot
        make pruning inexact."""
        if not isinstance(t, torch.Tensor):
            self.fix(ids, why)
            return
        self.pending.setdefault(id(t), (t, []))[1].append((ids, why))
        self.keep_alive.append(t)

    @property
    def current(self) -> str:
        """The innermost running module that is not a layer family ("" for the model)."""
        return self.stack[-1] if self.stack else ""

    def split_heads(self, name: str, ids: Ids, outer: int, heads: int, head_dim: int, literal: bool,
                    width_given: bool) -> Ids:
        """Head variables for channels ``ids`` split into ``(outer, heads, head_dim)``; each
        head's variable is coupled with its ``outer * head_dim`` channels."""
        hv = self.fresh(heads)
        self.couple(hv.reshape(1, heads, 1).expand(outer, heads, head_dim).reshape(-1), ids)
        self.heads.append(HeadSplit(self.current, heads, head_dim, hv, literal, name, width_given))
        return hv

    def _shape_read(self, t: torch.Tensor) -> None:
        """The forward read the shape of ``t``: its head counts are numbers that follow
        pruning (HF's ``repeat_kv`` reshapes to ``heads_from_shape * n_rep``)."""
        head_ids = torch.cat([h.ids for h in self.heads])
        for d, ids in (self.peek(t) or {}).items():
            if bool(torch.isin(ids, head_ids).any()):
                self.shape_sizes.setdefault(self.current, set()).add(t.shape[d])

    def given_for_heads(self, name: str, value: int, ids: Ids) -> None:
        """A reshape was given the number ``value`` for a dim that carries heads (merged back,
        or kept): after pruning it must be an attribute the speedup changes."""
        if self.heads and bool(torch.isin(ids, torch.cat([h.ids for h in self.heads])).any()):
            self.head_sizes.append((self.current, value, ids, name))

    # -- annotations ---------------------------------------------------------------------
    def peek(self, t: Any) -> Ann | None:
        """The annotation ``t`` already has (a parameter gets one only when a rule asks)."""
        hit = self.ann.get(id(t)) if isinstance(t, torch.Tensor) else None
        return hit[1] if hit is not None and hit[0] is t else None

    def get(self, t: Any) -> Ann | None:
        if not isinstance(t, torch.Tensor):
            return None
        hit = self.peek(t)
        if hit is not None:
            return hit
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

    def bind(self, t: Any, ann: Ann, why: str) -> None:
        """Say that tensor ``t`` carries the variables ``ann``: a parameter or buffer is
        registered (or coupled, if seen before); a computed tensor is coupled with what it
        carries, and dims it does not track are fixed (``why``)."""
        if not isinstance(t, torch.Tensor):
            return
        name = self.param_names.get(id(t))
        if name is not None:
            self.register_tensor(name, t, ann)
            return
        have = self.peek(t) or {}
        for d, ids in ann.items():
            if d in have and have[d].numel() == ids.numel():
                self.couple(have[d], ids)
            else:
                self.fix(ids, why)

    def module_param(self, module: nn.Module, attr: str, ann: Ann) -> None:
        """Register the dims of ``module.<attr>`` (nothing if the module has no such tensor)."""
        name = self.module_names.get(id(module), "?")
        if parametrize.is_parametrized(module, attr):
            plist = module.parametrizations[attr]
            foreign = [type(p).__name__ for p in plist if not isinstance(p, Mask)]
            if foreign:
                for ids in ann.values():
                    self.fix(ids, f"{name}.{attr} is computed by a {foreign[0]} parametrization, which secateurs "
                                  "cannot slice")
                return
            t = plist.original
        else:
            t = getattr(module, attr, None)
        if isinstance(t, torch.Tensor) and id(t) in self.param_names:
            self.register_tensor(self.param_names[id(t)], t, ann)

    def channel_in(self, x: torch.Tensor, dim: int, size: int, why: str) -> Ids:
        """The variables of x's channel dim ``dim``; fresh fixed ones when x carries none."""
        ids = (self.get(x) or {}).get(dim)
        if ids is None or ids.numel() != size:
            ids = self.fixed_fresh(size, why)
        return ids

    def record_input(self, weight: Any, x: torch.Tensor, dim: int) -> None:
        """Input statistics of the layer whose ``weight`` a functional op (``F.linear``,
        ``F.conv2d``) applies to ``x``, when statistics are recorded."""
        weight = self.masked_from.get(id(weight), weight)
        name = self.param_names.get(id(weight), "") if isinstance(weight, torch.Tensor) else ""
        if self.stats is not None and name.endswith(".weight"):
            owner = name[: -len(".weight")]
            self.stats[owner] = channel_stats(x, dim, self.stats.get(owner))

    # -- modules -------------------------------------------------------------------------
    def on_module(self, module: nn.Module, family: LayerFamily, args: tuple, kwargs: dict, out: Any) -> None:
        """A plain module of a known family ran: its family says how channels flow."""
        name = self.module_names.get(id(module), "?")
        x = args[0] if args else next(iter(kwargs.values()), None)
        use = ModuleUse(name, module_type_name(module), family=family.name)
        try:
            out_ann = family.trace(self, module, name, x, args, kwargs, out, use)
        except Exception as e:  # a call the family does not understand: refuse its channels, never crash
            self.unknown_op(f"{name} ({type(e).__name__} in the {family.name} rule: {e})", [x])
            return
        self.rules_used.add(family.name)
        self._remember(use, x, out)
        if out_ann is not None:
            self.set(out, out_ann)

    def on_traced_through(self, module: nn.Module, family: LayerFamily, x: Any, out: Any) -> None:
        """A module of a known family that was traced op by op: its channels are those of
        its weight, as the op rules registered them."""
        name = self.module_names.get(id(module), "?")
        dims = self.tensors.get(f"{name}.weight", {})
        out_dim, in_dim = family.weight_dims(module)
        use = ModuleUse(name, module_type_name(module), dims.get(in_dim), dims.get(out_dim), family.name, False)
        self._remember(use, x, out)

    def count_uses(self, tensors: Sequence[Any]) -> None:
        for t in tensors:
            if isinstance(t, torch.Tensor):
                self.uses[id(t)] += 1
                hit = self.pending.get(id(t))
                if hit is not None and hit[0] is t:
                    del self.pending[id(t)]
                    for ids, why in hit[1]:
                        self.fix(ids, why)

    def _remember(self, use: ModuleUse, x: Any, out: Any) -> None:
        first = out[0] if isinstance(out, (tuple, list)) and out else out
        known = self.modules.get(use.name)
        if known is None:
            use.input_from = self.made_by.get(id(x))
            if isinstance(first, torch.Tensor):
                self.uses[id(first)] = 0  # counts so far were of dead tensors with the same id
                self.made_by[id(first)] = use.name
                self.out_key[use.name] = id(first)
                self.keep_alive.append(first)
            self.modules[use.name] = use
            return
        self.out_key.pop(use.name, None)  # called twice: its output is read more than once
        for a, b in ((known.in_ids, use.in_ids), (known.out_ids, use.out_ids)):  # a module called again
            if a is not None and b is not None and a.numel() == b.numel():
                self.couple(a, b)

    # -- functions -----------------------------------------------------------------------
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
            if self.pending:  # .item(), .tolist(), bool(): the value is read all the same
                self.count_uses([a for a in args if isinstance(a, torch.Tensor)])
            if name in ("__get__", "size") and self.heads and args and isinstance(args[0], torch.Tensor):
                self._shape_read(args[0])
            return
        flat_in, _ = tree_flatten((args, kwargs))
        tensors_in = [t for t in flat_in if isinstance(t, torch.Tensor)]
        self.count_uses(tensors_in)
        if name in _FACTORY or not any(self.peek(t) or id(t) in self.param_names for t in tensors_in):
            return  # nothing channel-carrying comes out
        found = OP_RULES.for_op(name)
        if found is None:
            self.unknown_op(name, tensors_in)
            return
        rule_name, rule = found
        self.rules_used.add(rule_name)
        try:
            rule(self, name, args, kwargs, out)
        except Exception as e:  # a call the rule does not understand: refuse its channels, never crash
            self.unknown_op(f"{name} ({type(e).__name__} in its rule: {e})", tensors_in)

    # -- result --------------------------------------------------------------------------
    def finish(self, outputs: Any, free_outputs: Any = ()) -> ChannelGraph:
        free = [self.modules[n].out_ids for n in free_outputs if n in self.modules and self.modules[n].out_ids is not None]
        output_ids = {}
        leaves = output_leaves(outputs)
        self.count_uses([t for _, t in leaves])
        for name, key in self.out_key.items():
            self.modules[name].out_uses = self.uses[key]
        for path, t in leaves:
            ann = self.get(t) or {}
            if ann:
                output_ids[path] = ann
            for ids in ann.values():
                if not any(ids is f for f in free):
                    self.fix(ids, "model output")
        self._check_splits()
        n = self.n
        label = torch.arange(n)
        if self.edges_a:
            a, b = torch.cat(self.edges_a), torch.cat(self.edges_b)
            label = connected_labels(label, a, b)
        _, component = torch.unique(label, return_inverse=True)
        n_comp = int(component.max()) + 1 if n else 0
        heads = self._confirmed_heads(component, n_comp)
        fixed = torch.zeros(n_comp, dtype=torch.bool)
        reason_of = torch.full((n_comp,), -1, dtype=torch.long)
        reasons: dict[str, int] = {}
        for ids, why in self.fixed_ids:  # one entry per op that fixed something; first reason wins
            comps = component[ids]
            reason_of[comps[~fixed[comps]]] = reasons.setdefault(why, len(reasons))
            fixed[comps] = True
        sizes = [site for h in heads for site in (SizeSite(h.module, h.heads, h.ids),
                                                   SizeSite(h.module, h.heads * h.head_dim, h.ids, h.head_dim))]
        sizes += [SizeSite(m, size, parts[0]) for m, size, parts, _, _ in self.splits]
        return ChannelGraph(n, component, fixed, self.tensors, self.modules, reason_of, list(reasons),
                            dict(self.unknown), rules_used=self.rules_used, output_ids=output_ids,
                            heads=heads, sizes=sizes, int_reads=self._size_reads())

    def _size_reads(self) -> dict[str, set[str]]:
        """Per module, the attributes it read whose values it gave to ops as sizes of heads
        (an attribute read for another purpose with the same value, say a number of
        buckets, is left alone)."""
        given: dict[str, set[int]] = {}
        for h in self.heads:
            if h.literal:
                given.setdefault(h.module, set()).add(h.heads)
        for m, value, _, _ in self.head_sizes:
            given.setdefault(m, set()).add(value)
        for m, size, _, _, _ in self.splits:
            given.setdefault(m, set()).add(size)
        modules = dict(self.model.named_modules())
        return {m: {a for a in names if getattr(modules[m], a, None) in given.get(m, set())}
                for m, names in self._reads_by_name().items()}

    def _reads_by_name(self) -> dict[str, set[str]]:
        modules = {id(m): n for n, m in self.model.named_modules()}
        return {modules[k]: names for k, names in self.reads.items() if k in modules}

    def _int_values(self, module: str, fixed: bool = False) -> set[int]:
        """The values of the integer attributes of ``module`` its forward read (with
        ``fixed``, also those its class says never follow pruning)."""
        if self._by_name is None:
            self._by_name = dict(self.model.named_modules()), self._reads_by_name()
        owner = self._by_name[0].get(module)
        names = self._by_name[1].get(module, set())
        if fixed:
            names = names | set(getattr(type(owner), "fixed_sizes", ()))
        return {v for a in names if type(v := getattr(owner, a, None)) is int}

    def _check_splits(self) -> None:
        """Keep the head splits and equal ``split`` sizes the speedup can follow, fix the rest
        (couplings made here still join components: it runs before they are computed)."""
        for m, size, parts, ids, why in list(self.splits):
            if size in self._int_values(m):
                for part in parts[1:]:  # every part must keep the same positions to stay equal
                    self.couple(parts[0], part)
            else:
                self.fix(ids, why)
                self.splits.remove((m, size, parts, ids, why))
        for m, value, ids, op in self.head_sizes:
            read, dynamic = self._int_values(m), self.shape_sizes.get(m, set())
            if value not in read | dynamic and not any(value == a * b for a in dynamic for b in read | dynamic):
                self.fix(ids, f"{op!r} in {m or 'the model'} splits or merges channel dims: it gives a dim that "
                              "carries attention heads a size the module does not hold as an attribute (it would "
                              "not follow pruning)")
        counts: dict[str, set[int]] = {}
        for h in self.heads:
            counts.setdefault(h.module, set()).add(h.heads)
        for h in self.heads:
            read = self._int_values(h.module)
            # Grouped-query attention: q heads per k/v head is a number that stays; read under the
            # same value as a head count, the speedup could not tell which attribute to change.
            group = max(counts[h.module]) // min(counts[h.module])
            if group > 1 and group in read and group in counts[h.module]:
                self.fix(h.ids, f"{h.module or 'the model'} has as many query heads per key/value head as it has "
                                "heads of one kind, so its attributes for the two cannot be told apart")
            elif h.width_given and h.head_dim not in self._int_values(h.module, fixed=True):
                self.fix(h.ids, f"{h.op!r} in {h.module or 'the model'} splits or merges channel dims: into heads of "
                                "a width the module does not hold as an attribute (it may be computed from the head "
                                "count)")
            elif h.literal and h.heads not in read:
                self.fix(h.ids, f"{h.op!r} in {h.module or 'the model'} splits or merges channel dims: into a "
                                "number of heads the module does not hold as an attribute (it could not follow "
                                "pruning)")
            elif h.heads == h.head_dim and h.heads in read:
                self.fix(h.ids, f"{h.module or 'the model'} has as many heads as each head has channels, so "
                                "its attributes for the two cannot be told apart")

    def _confirmed_heads(self, component: torch.Tensor, n_comp: int) -> list[HeadSplit]:
        """Head splits that an attention product uses as heads; the others are fixed (a
        channel shuffle, or groups nothing treats one by one)."""
        used = torch.zeros(n_comp, dtype=torch.bool)
        if self.attention_ids:
            used[component[torch.cat(self.attention_ids)]] = True
        kept = []
        for h in self.heads:
            if bool(used[component[h.ids]].all()):
                kept.append(h)
            else:
                # First in the list, so that this is the reason given (not a size check's).
                self.fixed_ids.insert(0, (h.ids, f"{h.op!r} in {h.module or 'the model'} splits or merges channel "
                                                 "dims: into groups that no attention product uses as heads"))
        return kept


def connected_labels(label: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Smallest label of each connected component, given edges ``a[i] -- b[i]``
    (vectorised label propagation with pointer jumping)."""
    while True:
        low = torch.minimum(label[a], label[b])
        new = label.clone()
        new.scatter_reduce_(0, a, low, reduce="amin")
        new.scatter_reduce_(0, b, low, reduce="amin")
        new = new[new]
        if torch.equal(new, label):
            return label
        label = new


def _reading_class(cls: type, reads: dict[int, set[str]]) -> type:
    """A subclass of ``cls`` that records which integer attributes are read from its
    instances: the sizes a forward computes with (``self.num_heads``), which the speedup
    must change with the heads it removes. Instances wear it only during the trace. A class
    may name in ``fixed_sizes`` the integer attributes that never follow pruning (a
    head's width), so that they are not mistaken for one that does."""

    stay = set(getattr(cls, "fixed_sizes", ()))

    def __getattribute__(self, attr):
        value = cls.__getattribute__(self, attr)
        if type(value) is int and attr not in stay:
            reads.setdefault(id(self), set()).add(attr)
        return value

    return type(cls.__name__, (cls,), {"__getattribute__": __getattribute__, "__module__": cls.__module__,
                                       "__qualname__": cls.__qualname__})


class _Recorder(TorchFunctionMode):
    def __init__(self, tracer: Tracer) -> None:
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


def example_signature(example: Any) -> Any:
    """The structure, shapes and dtypes of an example input, for comparing two examples."""
    leaves, spec = tree_flatten(example)
    return str(spec), [(tuple(t.shape), t.dtype) if isinstance(t, torch.Tensor) else repr(t) for t in leaves]


def measure_inputs(model: nn.Module, example: Any) -> tuple[dict[str, torch.Tensor], Any]:
    """One plain forward (eval mode, no gradients, modes restored): the per-channel input
    statistics that ``trace_channels(..., record_inputs=True)`` records for each layer,
    and the output. Used when the channel graph is already known."""
    stats: dict[str, torch.Tensor] = {}
    handles = []

    for name, m in model.named_modules():
        family = LAYERS.family_of(m)
        if family is not None and family.is_plain(m):
            handles.append(m.register_forward_pre_hook(_stats_hook(stats, name, family)))
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad(), no_gc():
            output = call_with(model, example)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    return stats, output


def _stats_hook(stats: dict[str, torch.Tensor], name: str, family: LayerFamily, tracer: Tracer | None = None):
    """A forward pre-hook that adds the layer's input to ``stats[name]`` (:func:`channel_stats`).

    With a ``tracer``, only layers at the top level are measured, and the measuring ops
    are hidden from it: they are not part of the model."""
    def hook(module, args):
        x = args[0] if args else None
        dim = family.input_channel_dim(module, x) if isinstance(x, torch.Tensor) else None
        if dim is None or (tracer is not None and tracer.depth):
            return
        if tracer is not None:
            tracer.depth += 1
        try:
            stats[name] = channel_stats(x, dim, stats.get(name))
        finally:
            if tracer is not None:
                tracer.depth -= 1

    return hook


def channel_stats(x: torch.Tensor, dim: int, prev: torch.Tensor | None = None) -> torch.Tensor:
    """``(3, C)``: per channel of ``x`` along ``dim``, its minimum, maximum and mean
    (combined with ``prev`` from an earlier call of the same layer)."""
    per = x.detach().movedim(dim, 0).reshape(x.shape[dim], -1)
    stats = torch.stack([per.amin(1), per.amax(1), per.mean(1)])
    if prev is not None:
        stats = torch.stack([torch.minimum(prev[0], stats[0]), torch.maximum(prev[1], stats[1]), prev[2]])
    return stats


def trace_channels(
    model: nn.Module, example: Any, warn: bool = True, record_inputs: bool = False, free_outputs: Any = ()
) -> ChannelGraph:
    """Run ``model`` once on ``example`` and build its :class:`ChannelGraph`.

    The model's modes are restored afterwards, gradients are not recorded and nothing
    is printed; ops that are not understood make the channels they touch unprunable
    and are named in one warning.

    Args:
        record_inputs: also keep, for every layer whose family can fold constants (and
            those traced op by op), the per-channel minimum, maximum and mean of its input
            (``graph.input_stats``), and the output (``graph.output``): what the speedup
            engine needs to decide which channels can go and to verify.
        free_outputs: names of layers whose output is a model output and may still be
            pruned (the user named them); every other model output is fixed.

    Raises:
        TypeError: the model's output holds objects that cannot be checked
            (:func:`output_leaves`).
    """
    tracer = Tracer(model)
    stats: dict[str, torch.Tensor] = {}
    if record_inputs:
        tracer.stats = stats
    handles = []

    def pre(module, args, kwargs):
        if tracer.depth == 0:
            tracer.count_uses(tree_flatten((args, kwargs))[0])
        tracer.depth += 1

    def post(family):
        def hook(module, args, kwargs, out):
            if tracer.depth == 1:  # still "inside": the family's own tensor ops are not recorded
                tracer.on_module(module, family, args, kwargs, out)
            tracer.depth -= 1

        return hook

    def mask_post(module, args, kwargs, out):
        if tracer.depth == 1:  # a mask computed outside a plain layer: weight * mask keeps its channels
            tracer.set(out, dict(tracer.get(args[0]) or {}))
            tracer.masked_from[id(out)] = args[0]
            tracer.keep_alive.append(out)
        tracer.depth -= 1

    def traced_through(family):
        def hook(module, args, out):
            if tracer.depth == 0:
                tracer.on_traced_through(module, family, args[0] if args else None, out)

        return hook

    def count(module, args, kwargs):
        if tracer.depth == 0:
            tracer.count_uses(tree_flatten((args, kwargs))[0])

    def enter(name):
        def hook(module, args):
            tracer.stack.append(name)

        return hook

    def leave(module, args, out):
        tracer.stack.pop()

    watched: dict[nn.Module, type] = {}
    for name, m in model.named_modules():
        if isinstance(m, Mask):
            handles.append(m.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(m.register_forward_hook(mask_post, with_kwargs=True))
            continue
        family = LAYERS.family_of(m)
        if family is None:
            handles.append(m.register_forward_pre_hook(enter(name)))
            handles.append(m.register_forward_hook(leave, always_call=True))
            if not isinstance(m, torch.jit.ScriptModule):
                watched[m] = type(m)
            continue
        if record_inputs:
            handles.append(m.register_forward_pre_hook(_stats_hook(stats, name, family, tracer)))
        if family.is_plain(m):
            handles.append(m.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(m.register_forward_hook(post(family), with_kwargs=True))
        else:
            handles.append(m.register_forward_pre_hook(count, with_kwargs=True))
            handles.append(m.register_forward_hook(traced_through(family)))
    modes = {m: m.training for m in model.modules()}
    classes: dict[type, type] = {}
    try:
        for m, cls in list(watched.items()):
            try:
                if cls not in classes:
                    classes[cls] = _reading_class(cls, tracer.reads)
                m.__class__ = classes[cls]
            except TypeError:  # a class that cannot be subclassed so: its reads stay unknown (heads kept)
                del watched[m]
        model.eval()
        with torch.no_grad(), _Recorder(tracer), no_gc():
            try:
                outputs = call_with(model, example)
            except Exception as e:
                message = (f"{type(model).__name__}'s forward failed on the example input, so it cannot be traced "
                           f"(nothing was changed): {type(e).__name__}: {e}")
                try:
                    wrapped = type(e)(message)
                except Exception:  # an exception type with its own constructor
                    wrapped = RuntimeError(message)
                raise wrapped from e
    finally:
        for m, cls in watched.items():
            m.__class__ = cls
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    for name, m in model.named_modules():
        family = LAYERS.family_of(m)
        if family is not None and name not in tracer.modules and f"{name}.weight" in tracer.tensors:
            tracer.on_traced_through(m, family, None, None)  # not called, but ops used its weight
    graph = tracer.finish(outputs, free_outputs)
    graph.example, graph.free_outputs = example_signature(example), tuple(sorted(free_outputs))
    if record_inputs:
        graph.input_stats, graph.output = stats, outputs
    if warn and graph.unknown_ops:
        ops = ", ".join(f"{k} (x{v})" for k, v in sorted(graph.unknown_ops.items()))
        warnings.warn(
            f"secateurs does not know these ops, so the channels they touch will not be pruned: {ops}",
            stacklevel=2,
        )
    return graph
