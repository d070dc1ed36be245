"""The one place that turns scores and settings into masks.

Vocabulary:
    unit: what is kept or pruned as a whole: an element, an output channel (the slice
        ``w[i]``), an input channel (``w[:, i]``) or a block. Every granularity is a block
        shape: element = (1, 1, ...), out_channel = (1, *shape[1:]), in_channel =
        (shape[0], 1, *shape[2:]).
    slot: the scores that are ranked together: one target, or the summed scores of a
        dependency group (whose members must prune identical unit indices).

Counting rule (NNI's): a ratio ``r`` over ``n`` units prunes ``floor(n * r)`` units, the
lowest scored; ties go to the lower index. A global group prunes ``floor(N * r)`` of
the ``N`` units of all its slots together, ranking them in one order, while every slot
stays within ``[floor(n_i * min_sparse_ratio), floor(n_i * max_sparse_ratio)]`` (by
default a slot in a global group keeps at least one unit). A ``sparse_threshold``
prunes the units scored strictly below it, within the same bounds. No count ever
exceeds a ``max_sparse_ratio``; bounds that contradict each other raise.

Units already pruned by an attached mask come in with the score ``-inf`` (the pruners
do that), so they are the first of the ``floor(n * r)``.

Everything is vectorised over units; Python loops run over slots only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .config import Granularity, ModuleSetting


def block_shape(
    granularity: Granularity,
    shape: Sequence[int],
    default: str,
    where: str,
    out_dim: int = 0,
) -> tuple[int, ...]:
    """The block (unit) shape for a tensor of ``shape`` under ``granularity``.

    A list of block sizes shorter than the tensor's rank covers the remaining dims
    whole; -1 means a whole dim. ``per_channel`` has element units (ranked per row).
    ``out_dim`` is the output-channel dim (1 for transposed convolutions); the input
    channels are the other one of dims 0 and 1.

    Raises:
        ValueError: the granularity does not fit the tensor (``where`` names it).
    """
    if granularity == "default":
        granularity = default
    ndim = len(shape)
    if ndim == 0:
        raise ValueError(f"{where} is a scalar; there is nothing to prune.")
    if granularity in ("element", "per_channel"):
        return (1,) * ndim
    if granularity in ("out_channel", "in_channel"):
        dim = out_dim if granularity == "out_channel" else 1 - out_dim
        if dim >= ndim:
            raise ValueError(f"{where} has shape {tuple(shape)}; {granularity!r} needs at least {dim + 1} dims.")
        return tuple(1 if d == dim else s for d, s in enumerate(shape))
    if len(granularity) > ndim:
        raise ValueError(
            f"{where} has {ndim} dims but granularity {list(granularity)} gives {len(granularity)} block sizes."
        )
    sizes = list(granularity) + [-1] * (ndim - len(granularity))
    return tuple(s if b == -1 else b for b, s in zip(sizes, shape))


def grid_shape(shape: Sequence[int], blocks: Sequence[int]) -> tuple[int, ...]:
    """How many blocks there are along each dim (the last one may be partial)."""
    return tuple(math.ceil(s / b) for s, b in zip(shape, blocks))


def to_units(tensor: torch.Tensor, blocks: Sequence[int], pad: float = float("nan")) -> torch.Tensor:
    """View ``tensor`` as ``(n_units, block_numel)``.

    Partial blocks at the edges are padded with ``pad``: NaN by default, which the
    criteria skip (``nansum``/``nanmean``), so a partial block is scored on its own
    elements only.
    """
    shape = tuple(tensor.shape)
    grid = grid_shape(shape, blocks)
    extra = [g * b - s for g, b, s in zip(grid, blocks, shape)]
    if any(extra):
        spec = []
        for p in reversed(extra):
            spec += [0, p]
        tensor = torch.nn.functional.pad(tensor, spec, value=pad)
    interleaved = [d for g, b in zip(grid, blocks) for d in (g, b)]
    ndim = len(shape)
    order = list(range(0, 2 * ndim, 2)) + list(range(1, 2 * ndim, 2))
    return tensor.reshape(interleaved).permute(order).reshape(math.prod(grid), math.prod(blocks))


def expand_units(unit_keep: torch.Tensor, shape: Sequence[int], blocks: Sequence[int]) -> torch.Tensor:
    """Turn a per-unit keep vector into a full-shape bool mask (inverse of :func:`to_units`)."""
    grid = grid_shape(shape, blocks)
    ndim = len(shape)
    view = unit_keep.reshape([d for g in grid for d in (g, 1)])
    full = view.expand([d for g, b in zip(grid, blocks) for d in (g, b)]).reshape([g * b for g, b in zip(grid, blocks)])
    if any(g * b != s for g, b, s in zip(grid, blocks, shape)):
        full = full[tuple(slice(0, s) for s in shape)]
    return full.contiguous() if ndim else full


@dataclass
class Slot:
    """Scores ranked together, with their bounds.

    Attributes:
        keys: the (module name, target name) pairs that share this slot's unit mask.
        scores: ``(n,)``, or ``(rows, n)`` for per-row ranking (``per_channel``).
        setting: the setting that decides ratio, threshold and group.
        min_count / max_count: bounds on pruned units per row.
    """

    keys: list[tuple[str, str]]
    scores: torch.Tensor
    setting: ModuleSetting
    min_count: int
    max_count: int


def _bounds(n: int, members: Sequence[tuple[int, ModuleSetting]], in_global_group: bool,
            where: str = "") -> tuple[int, int]:
    """Bounds ``(min_count, max_count)`` on the pruned units of a slot of ``n`` units.

    Args:
        members: ``(units it covers, setting)`` of every tensor sharing the slot; each
            member's ``min_sparse_ratio`` and ``max_sparse_ratio`` count over its own units,
            so the slot never prunes more than any member's ``max_sparse_ratio`` allows.
        in_global_group: without a ``max_sparse_ratio``, a slot in a global group keeps
            at least one unit (an explicit ``min_sparse_ratio`` may ask for more).
        where: names the slot in messages.

    Raises:
        ValueError: a member's ``min_sparse_ratio`` needs more pruned units than another's
            ``max_sparse_ratio`` allows.
    """
    low = max(math.floor(c * (s.min_sparse_ratio or 0.0)) for c, s in members)
    highs = [math.floor(c * s.max_sparse_ratio) for c, s in members if s.max_sparse_ratio is not None]
    if not highs:
        return low, max(n - 1 if in_global_group else n, low)
    high = min(highs)
    if low > high:
        raise ValueError(
            f"{where or 'a slot'}: min_sparse_ratio asks to prune at least {low} of {n} units but "
            f"max_sparse_ratio allows at most {high}."
        )
    return low, high


def make_slots(scored: Sequence[tuple[tuple[str, str], torch.Tensor, ModuleSetting]]) -> list[Slot]:
    """One slot per target that is ranked on its own (dependency groups are built by
    :mod:`secateurs.pruners.dependency`).

    Args:
        scored: ((module name, target name), unit scores, setting) for every target.

    Raises:
        ValueError: the scores contain NaN.
    """
    out = []
    for key, scores, setting in scored:
        check_scores(key, scores)
        where = f"{key[0]}.{key[1]}"
        low, high = _bounds(scores.shape[-1], [(scores.shape[-1], setting)], setting.global_group_id is not None,
                            where)
        out.append(Slot([key], scores.float(), setting, low, high))
    return out


def check_scores(key: tuple[str, str], scores: torch.Tensor) -> None:
    """Refuse scores with NaN (a broken weight or statistic would rank arbitrarily)."""
    if torch.isnan(scores.sum()) and torch.isnan(scores).any():
        raise ValueError(f"the scores of {key[0]}.{key[1]} contain NaN; check the model's weights.")


def lowest_mask(scores: torch.Tensor, k: torch.Tensor | int) -> torch.Tensor:
    """Keep-mask that prunes the ``k`` lowest scores of each row (ties: lower index first).

    Args:
        scores: ``(n,)`` or ``(rows, n)``.
        k: pruned count, an int or one per row.
    """
    flat = scores.dim() == 1
    s = scores.reshape(1, -1) if flat else scores
    rows, n = s.shape
    k = torch.as_tensor(k, dtype=torch.long).reshape(-1).expand(rows)
    keep = torch.ones_like(s, dtype=torch.bool)
    if n == 0 or not bool((k > 0).any()):
        return keep.reshape(scores.shape)
    if bool((k == k[0]).all()):
        kk = int(k[0])
        if kk >= n:
            return torch.zeros_like(keep).reshape(scores.shape)
        t = torch.kthvalue(s, kk, dim=1).values.unsqueeze(1)
    else:
        t = torch.sort(s, dim=1).values.gather(1, (k - 1).clamp(min=0).unsqueeze(1))
        t = torch.where(k.unsqueeze(1) > 0, t, torch.full_like(t, -math.inf))
    below = s < t
    need = k.unsqueeze(1) - below.sum(1, keepdim=True)
    ties = s == t
    keep = ~below
    if bool((ties.sum(1, keepdim=True) > need).any()):
        keep &= ~ties | (torch.cumsum(ties, dim=1) > need)
    else:
        keep &= ~ties
    return keep.reshape(scores.shape)


def _sortable_keys(scores: torch.Tensor) -> torch.Tensor:
    """int32 keys whose signed order is the float order of ``scores`` (-0.0 == 0.0)."""
    bits = (scores.float() + 0.0).contiguous().view(torch.int32)
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


def global_counts(slots: Sequence[Slot], total: int, digit_bits: int = 8) -> list[int]:
    """Pruned units per slot when ``total`` units are pruned over one ranking of all slots.

    Every slot's count is clamped to its ``[min_count, max_count]``; the threshold is
    found by a radix select on the scores' bit patterns, ``digit_bits`` bits a pass
    (O(units) a pass, no global sort, small temporaries). Units tied at the threshold
    go to earlier slots first.
    """
    low = torch.tensor([s.min_count for s in slots], dtype=torch.long)
    high = torch.tensor([s.max_count for s in slots], dtype=torch.long)
    radix = 1 << digit_bits
    keys = [(_sortable_keys(s.scores).reshape(-1).long() + (1 << 31)) for s in slots]  # unsigned order
    base = torch.zeros(len(slots), dtype=torch.long)  # units below the prefix chosen so far
    prefix = 0
    for shift in range(32 - digit_bits, -1, -digit_bits):
        cum = torch.zeros(len(slots), radix + 1, dtype=torch.long)
        for i, k in enumerate(keys):
            inside = k[(k >> (shift + digit_bits)) == prefix] if shift + digit_bits < 32 else k
            cum[i, 1:] = torch.cumsum(torch.bincount((inside >> shift) & (radix - 1), minlength=radix), 0)
        cum += base[:, None]
        clamped = torch.minimum(torch.maximum(cum, low[:, None]), high[:, None]).sum(0)
        digit = min(int(torch.searchsorted(clamped, total, right=True)) - 1, radix - 1)
        prefix = (prefix << digit_bits) | digit
        base, nxt = cum[:, digit], cum[:, digit + 1]
    lower = torch.minimum(torch.maximum(base, low), high)
    upper = torch.minimum(torch.maximum(nxt, low), high)
    room = upper - lower
    before = torch.cumsum(room, 0) - room
    take = torch.minimum((total - int(lower.sum()) - before).clamp(min=0), room)
    return (lower + take).tolist()


class _Ops:
    """The few element-wise operations of the fast path, on NumPy views of CPU tensors
    (NumPy's compare, count and compaction kernels are several times faster than
    PyTorch's on CPU) or on the tensors themselves elsewhere."""

    def __init__(self, tensors: Sequence[torch.Tensor]) -> None:
        self.numpy = all(t.device.type == "cpu" for t in tensors)

    def wrap(self, t: torch.Tensor):
        return t.detach().contiguous().numpy() if self.numpy else t

    def count_below(self, a, v: float) -> int:
        return int(np.count_nonzero(a < v)) if self.numpy else int(torch.count_nonzero(a < v))

    def between(self, a, lo: float, hi: float):
        return a[(a >= lo) & (a < hi)]

    def cat(self, arrays):
        return np.concatenate(arrays) if self.numpy else torch.cat(arrays)

    def kth(self, a, k: int) -> float:
        """The k-th smallest (1-based) value of a."""
        if self.numpy:
            return float(np.partition(a, k - 1)[k - 1])
        return torch.kthvalue(a, k).values.item()

    def tensor(self, a) -> torch.Tensor:
        return torch.from_numpy(a) if self.numpy else a

    def cumsum(self, a):
        return np.cumsum(a) if self.numpy else torch.cumsum(a, 0)


def _fast_keep(slots: Sequence[Slot], total: int, seed: int = 0) -> list[torch.Tensor] | None:
    """Keep-masks for a large group, or None when a slot's bounds bind (the caller then
    takes the exact clamped path).

    A random sample of the scores brackets the ``total``-th smallest score; one pass
    counts the units below the bracket and gathers those inside it, which are few; the
    threshold is the exact order statistic among them. The result is the same as
    :func:`global_counts` with :func:`lowest_mask` would give, in about two passes.
    """
    ops = _Ops([s.scores for s in slots])
    flats = [ops.wrap(s.scores.reshape(-1)) for s in slots]
    sizes = [s.scores.numel() for s in slots]
    n_total = sum(sizes)
    gen = torch.Generator().manual_seed(seed)
    budget = min(n_total, 1 << 18)
    picks = [torch.randint(n, (max(1, round(budget * n / n_total)),), generator=gen) for n in sizes]
    sample = torch.cat([s.scores.reshape(-1)[p.to(s.scores.device)].cpu() for s, p in zip(slots, picks)]).sort().values
    m = sample.numel()
    centre = total / n_total * m
    radius = int(4 * math.sqrt(m)) + 32
    for _ in range(4):
        lo_i, hi_i = math.floor(centre) - radius, math.ceil(centre) + radius
        t_lo = sample[lo_i].item() if lo_i >= 0 else -math.inf
        t_hi = sample[hi_i].item() if hi_i < m else math.inf
        below = [ops.count_below(f, t_lo) for f in flats]
        cands = [ops.between(f, t_lo, t_hi) for f in flats]
        n_below, n_cand = sum(below), sum(len(c) for c in cands)
        if n_below < total <= n_below + n_cand:
            break
        radius *= 8
    else:  # the bracket never held: only possible with a degenerate sample
        return None
    v = ops.kth(ops.cat(cands), total - n_below)
    less = torch.tensor([b + ops.count_below(c, v) for b, c in zip(below, cands)])
    equal = torch.tensor([int((c == v).sum()) for c in cands])
    low = torch.tensor([s.min_count for s in slots])
    high = torch.tensor([s.max_count for s in slots])
    if bool((less < low).any() or (less + equal > high).any()):
        return None
    extra = total - int(less.sum())
    before = torch.cumsum(equal, 0) - equal
    take = torch.minimum((extra - before).clamp(min=0), equal)
    keeps = []
    for f, slot, t, e in zip(flats, slots, take.tolist(), equal.tolist()):
        keep = f > v
        if 0 < t < e:
            ties = f == v
            keep |= ties & (ops.cumsum(ties) > t)
        elif t == 0 and e > 0:
            keep |= f == v
        keeps.append(ops.tensor(keep).reshape(slot.scores.shape))
    return keeps


def _group_keep(slots: Sequence[Slot], total: int, fast_min_units: int) -> list[torch.Tensor]:
    """Keep-masks that prune ``total`` units over one ranking of ``slots``."""
    if total <= 0:
        return [torch.ones_like(s.scores, dtype=torch.bool) for s in slots]
    if sum(s.scores.numel() for s in slots) >= fast_min_units and all(s.scores.dim() == 1 for s in slots):
        keeps = _fast_keep(slots, total)
        if keeps is not None:
            return keeps
    if len(slots) == 1:
        return [lowest_mask(slots[0].scores, total)]
    return [lowest_mask(s.scores, c) for s, c in zip(slots, global_counts(slots, total))]


FAST_MIN_UNITS = 1 << 20


def allocate(slots: Sequence[Slot], fast_min_units: int = FAST_MIN_UNITS) -> list[torch.Tensor]:
    """Keep-masks over units, one per slot, by the counting rule of this module.

    Args:
        fast_min_units: groups with at least this many units take the sampled fast path
            (same result, fewer passes over the scores).

    Raises:
        ValueError: a global group cannot reach its ratio within its members' bounds.
    """
    masks: list[torch.Tensor | None] = [None] * len(slots)
    groups: dict[object, list[int]] = {}
    for i, slot in enumerate(slots):
        st = slot.setting
        if st.sparse_threshold is not None:
            below = (slot.scores < st.sparse_threshold).sum(-1)
            k = below.clamp(slot.min_count, slot.max_count)
            if bool((k == below).all()):
                masks[i] = slot.scores >= st.sparse_threshold
            else:
                masks[i] = lowest_mask(slot.scores, k)
        elif st.global_group_id is not None:
            groups.setdefault(st.global_group_id, []).append(i)
        else:
            n = slot.scores.shape[-1]
            k = min(max(math.floor(n * st.sparse_ratio), slot.min_count), slot.max_count)
            if slot.scores.dim() == 1:
                masks[i] = _group_keep([Slot(slot.keys, slot.scores, st, 0, n)], k, fast_min_units)[0]
            else:
                masks[i] = lowest_mask(slot.scores, k)
    for gid, members in groups.items():
        group = [slots[i] for i in members]
        n_total = sum(s.scores.shape[-1] for s in group)
        ratio = group[0].setting.sparse_ratio
        total = math.floor(n_total * ratio)
        low = sum(s.min_count for s in group)
        high = sum(s.max_count for s in group)
        if not low <= total <= high:
            raise ValueError(
                f"global_group_id {gid!r}: sparse_ratio {ratio} asks to prune {total} of {n_total} units, "
                f"but the members' min/max_sparse_ratio allow only {low} to {high} (a layer in a global "
                "group keeps at least one unit unless max_sparse_ratio says otherwise)."
            )
        for i, keep in zip(members, _group_keep(group, total, fast_min_units)):
            masks[i] = keep
    return masks  # type: ignore[return-value]
