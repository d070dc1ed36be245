"""Pruners that learn their scores from training: Slim, ActivationAPoZRank,
ActivationMeanRank, TaylorFOWeight.

Each runs ``training_steps`` optimizer steps of the user's own training through an
:class:`~secateurs.evaluators.Evaluator`, gathering statistics with hooks; the statistics
are summed over ranks under ``torch.distributed`` so every rank computes the same masks;
the usual allocator then turns them into masks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from .._registry import PRUNERS
from ..config import ModuleSetting
from ..evaluators.base import Evaluator
from ..layers import LAYERS
from ..masks import Masks
from ..sparsity import grid_shape, to_units
from ..targets import get_module, original_parameter
from .base import Pruner, Target

_ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "relu6": F.relu6}


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over the ranks of the default process group (in place), if there is one."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


class DataPruner(Pruner):
    """Base of the pruners that gather statistics from ``training_steps`` training steps.

    Args:
        model: the model (it may be wrapped in DistributedDataParallel).
        config_list: see the config reference.
        evaluator: runs the user's training (TorchEvaluator, LightningEvaluator, ...).
        training_steps: optimizer steps to gather statistics over.
        dummy_input: example inputs for dependency-aware masks; defaults to the
            evaluator's ``dummy_input``.
    """

    def __init__(self, model: nn.Module, config_list: list[dict[str, Any]], evaluator: Evaluator,
                 training_steps: int, *, dummy_input: Any = None) -> None:
        name = type(self).__name__
        if not isinstance(evaluator, Evaluator):
            raise TypeError(
                f"{name}: 'evaluator' must be a secateurs Evaluator (TorchEvaluator, LightningEvaluator, "
                f"TransformersEvaluator); got {type(evaluator).__name__}."
            )
        if not isinstance(training_steps, int) or isinstance(training_steps, bool) or training_steps < 1:
            raise ValueError(f"{name}: 'training_steps' must be a positive int; got {training_steps!r}.")
        super().__init__(model, config_list,
                         dummy_input=dummy_input if dummy_input is not None else evaluator.dummy_input)
        self.evaluator = evaluator
        self.training_steps = training_steps
        self.stats: dict[tuple[str, str], torch.Tensor] = {}

    def _install(self, evaluator: Evaluator) -> None:
        """Register the hooks and patches that gather ``self.stats``."""
        raise NotImplementedError

    def _finish(self) -> None:
        """Turn gathered sums into scores once training is over (after the all-reduce)."""

    def compress(self) -> tuple[nn.Module, Masks]:
        """Train ``training_steps`` steps gathering statistics, then compute and attach masks.

        Raises:
            RuntimeError: the training loop stopped before ``training_steps`` optimizer
                steps, or gathered nothing for a target.
        """
        self.stats = {}
        with self.evaluator.session(self.model) as evaluator:
            self._install(evaluator)
            evaluator.train(max_steps=self.training_steps)
            ran = evaluator.steps_run
        if ran < self.training_steps:
            raise RuntimeError(
                f"{type(self).__name__}: the training loop ran {ran} of the {self.training_steps} optimizer steps "
                "asked for ('training_steps'), so the statistics would be incomplete; give the loop enough data "
                "(or epochs) for that many steps, or lower 'training_steps'."
            )
        inert = {(self.targets[i].module_name, self.targets[i].name)
                 for i, (k, n, _) in self._plan.fixed.items() if k == n}
        missing = [f"{m}.{n}" for m, n in ((t.module_name, t.name) for t in self.targets if t.name == "weight")
                   if (m, n) not in self.stats and (m, n) not in inert]
        if missing:
            raise RuntimeError(
                f"{type(self).__name__}: training ran but gathered nothing for {missing[:5]}; are these modules "
                "used in the training forward pass, and does the training loop call optimizer.step()?"
            )
        for value in self.stats.values():
            all_reduce_sum(value)
        self._finish()
        return super().compress()

    def score(self, target: Target, units: torch.Tensor) -> torch.Tensor:
        return self.stats[(target.module_name, target.name)].to(units.device)

    def _stats_shape(self, target: Target) -> tuple[int, ...]:
        """Shape of a target's statistics once gathered: one score per unit."""
        n = 1
        for g in grid_shape(target.shape, target.blocks):
            n *= g
        return (n,)

    def _extra_state(self) -> dict[str, torch.Tensor]:
        return {f"stats/{m}/{n}": v.detach().cpu().clone() for (m, n), v in self.stats.items()}

    def _extra_state_kinds(self) -> tuple[str, ...]:
        return ("stats",)

    def _load_extra_state(self, state: Mapping[str, torch.Tensor]) -> None:
        by_key = {(t.module_name, t.name): t for t in self.targets}
        stats = {}
        for key, value in state.items():
            module_name, _, name = key[len("stats/"):].rpartition("/")
            t = by_key.get((module_name, name))
            if t is None:
                raise ValueError(f"{type(self).__name__}.load_state_dict: {key!r} is not a target of this pruner; "
                                 f"its targets are {sorted(f'{m}.{n}' for m, n in by_key)}.")
            if tuple(value.shape) != self._stats_shape(t):
                raise ValueError(f"{type(self).__name__}.load_state_dict: {key!r} has shape {tuple(value.shape)}, "
                                 f"but {module_name}.{name} needs {self._stats_shape(t)}.")
            stats[(module_name, name)] = value
        self.stats = stats

    def _require_channels(self) -> None:
        for t in self.targets:
            if t.name == "weight" and (t.per_channel or t.setting.granularity not in ("default", "out_channel")):
                raise ValueError(
                    f"config_list[{t.setting.config_index}]: {type(self).__name__} scores output channels; "
                    f"'granularity' must be 'out_channel' (or left out) for {t.module_name!r}; "
                    f"got {t.setting.granularity!r}."
                )


def _channel_dim(module: nn.Module, output: torch.Tensor) -> int:
    family = LAYERS.family_of(module)
    return family.output_channel_dim(module, output) if family is not None else (1 if output.dim() > 1 else 0)


class _ActivationPruner(DataPruner):
    """Hooks record ``activation(output)`` of each target per output channel."""

    def __init__(self, model: nn.Module, config_list: list[dict[str, Any]], evaluator: Evaluator,
                 training_steps: int, activation: str = "relu", *, dummy_input: Any = None) -> None:
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"{type(self).__name__}: 'activation' must be one of {sorted(_ACTIVATIONS)}; got {activation!r}."
            )
        super().__init__(model, config_list, evaluator, training_steps, dummy_input=dummy_input)
        self.activation = activation
        self._require_channels()

    def _reduce(self, act: torch.Tensor) -> torch.Tensor:
        """Per-channel statistic of one batch, shape (2, C): a sum and a count."""
        raise NotImplementedError

    def _install(self, evaluator: Evaluator) -> None:
        fn = _ACTIVATIONS[self.activation]
        for t in self.targets:
            if t.name != "weight":
                continue
            key = (t.module_name, t.name)

            def hook(module, args, output, key=key):
                out = output[0] if isinstance(output, tuple) else output
                with torch.no_grad():
                    act = fn(out.detach())
                    dim = _channel_dim(module, act)
                    per = act.movedim(dim, 0).reshape(act.shape[dim], -1)
                    batch = self._reduce(per).double()
                self.stats[key] = self.stats[key] + batch if key in self.stats else batch

            evaluator.hook_forward(get_module(self.net, t.module_name), hook)


@PRUNERS.register("apoz")
class ActivationAPoZRankPruner(_ActivationPruner):
    """Prune the output channels with the highest Average Percentage of Zeros (APoZ).

    Hu et al., "Network Trimming", arXiv 1607.03250: during ``training_steps`` steps of
    training, count per channel how often ``activation(output)`` is zero; the channels
    that are zero most often go first.
    """

    needs = ("evaluator", "training_steps")

    def _reduce(self, per: torch.Tensor) -> torch.Tensor:
        return torch.stack([(per == 0).sum(1).to(per.dtype), torch.full_like(per[:, 0], per.shape[1])])

    def _finish(self) -> None:
        for key, (zeros, count) in list(self.stats.items()):
            self.stats[key] = (1 - zeros / count).float()  # a higher score keeps the channel


@PRUNERS.register("meanrank")
class ActivationMeanRankPruner(_ActivationPruner):
    """Prune the output channels with the smallest mean activation.

    Molchanov et al. (ICLR 2017) rank by mean activation; statistics are gathered over
    ``training_steps`` steps of training as for ActivationAPoZRankPruner.
    """

    needs = ("evaluator", "training_steps")

    def _reduce(self, per: torch.Tensor) -> torch.Tensor:
        return torch.stack([per.sum(1), torch.full_like(per[:, 0], per.shape[1])])

    def _finish(self) -> None:
        for key, (total, count) in list(self.stats.items()):
            self.stats[key] = (total / count).float()


@PRUNERS.register("taylorfo")
class TaylorFOWeightPruner(DataPruner):
    """Prune by the first-order Taylor estimate of each channel's contribution to the loss.

    Molchanov et al., "Importance Estimation for Neural Network Pruning", CVPR 2019:
    over ``training_steps`` steps, accumulate ``(w * dL/dw) ** 2`` per weight (read just
    before each optimizer step); a unit's score is the sum over its weights.
    """

    needs = ("evaluator", "training_steps")

    def _stats_shape(self, target: Target) -> tuple[int, ...]:
        return target.shape  # accumulated per weight; summed per unit when scored

    def _install(self, evaluator: Evaluator) -> None:
        params = {}
        for t in self.targets:
            params[(t.module_name, t.name)] = original_parameter(get_module(self.net, t.module_name), t.name)

        def accumulate() -> None:
            with torch.no_grad():
                for key, p in params.items():
                    if p.grad is None:
                        continue
                    value = (p.detach() * p.grad.detach()).double().square()
                    self.stats[key] = self.stats[key] + value if key in self.stats else value

        evaluator.before_optimizer_step(accumulate)

    def score(self, target: Target, units: torch.Tensor) -> torch.Tensor:
        acc = self.stats[(target.module_name, target.name)]
        return torch.nansum(to_units(acc, target.blocks), 1).float().to(units.device)


@PRUNERS.register("slim")
class SlimPruner(DataPruner):
    """Network Slimming: sparsify channel scale factors by training, prune the smallest.

    Liu et al., arXiv 1708.06519. The scale factor of a norm layer's channel is its
    ``gamma`` (the paper's setting, trained by the user's optimizer); any other target
    (a Conv or Linear) gets a learnable factor per output channel, initialised to 1,
    that multiplies its output during the ``training_steps`` steps and is trained by its
    own Adam (lr 1e-2), as NNI 3.0 did; it is discarded afterwards. The loss gets
    ``regular_scale * mean |factor|`` over every selected channel. NNI 3.0 averaged
    per-layer sums instead, which is harmless for its own Adam-trained factors but,
    applied to ``gamma`` through the user's SGD, would shrink every ``gamma`` by
    ``lr * regular_scale / layers`` a step and wreck the network at the default scale.
    Then the channels with the smallest ``|factor|`` are pruned, ranked globally across
    the targets of each config entry (as in the paper), at that entry's ``sparse_ratio``,
    unless the config gives its own ``global_group_id``.

    With ``dummy_input`` the masks cover the whole channel group. Without it, masks on a
    norm layer cover its weight and bias, and :class:`~secateurs.ModelSpeedup` still
    removes the producing convolution's channels where its output feeds only that norm
    layer (a channel whose scale and shift are both zero outputs zero), which NNI's
    speedup did not; channels a residual connection carries past the norm are kept.

    Args:
        regular_scale: weight of the L1 penalty (NNI 3.0's name and default).
    """

    needs = ("evaluator", "training_steps")
    default_op_types = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d")

    def __init__(self, model: nn.Module, config_list: list[dict[str, Any]], evaluator: Evaluator,
                 training_steps: int, regular_scale: float = 1.0, *, dummy_input: Any = None) -> None:
        if isinstance(regular_scale, bool) or not isinstance(regular_scale, (int, float)) or not regular_scale >= 0:
            raise ValueError(f"SlimPruner: 'regular_scale' must be a number >= 0; got {regular_scale!r}.")
        super().__init__(model, config_list, evaluator, training_steps, dummy_input=dummy_input)
        self.regular_scale = float(regular_scale)
        self._require_channels()

    def _adjust_settings(self, settings: dict[str, ModuleSetting]) -> dict[str, ModuleSetting]:
        # One global ranking per config entry, so each entry's ratio is honoured.
        return {
            name: s if s.global_group_id is not None or s.sparse_threshold is not None
            else dataclasses.replace(s, global_group_id=f"__slim__{s.config_index}")
            for name, s in settings.items()
        }

    def _install(self, evaluator: Evaluator) -> None:
        factors: dict[tuple[str, str], torch.Tensor] = {}
        extra: list[nn.Parameter] = []
        for t in self.targets:
            if t.name != "weight":
                continue
            module = get_module(self.net, t.module_name)
            family = LAYERS.family_of(module)
            if family is not None and family.channel_scale:
                factors[(t.module_name, t.name)] = original_parameter(module, "weight")
                continue
            weight = original_parameter(module, "weight")
            alpha = nn.Parameter(torch.ones(t.shape[t.out_dim], device=weight.device, dtype=weight.dtype))
            extra.append(alpha)
            factors[(t.module_name, t.name)] = alpha

            def scale(module, args, output, alpha=alpha):
                dim = _channel_dim(module, output)
                return output * alpha.reshape([-1 if d == dim else 1 for d in range(output.dim())])

            evaluator.hook_forward(module, scale)
        # The mean |factor| over every selected channel: the penalty acts on gamma through
        # the user's own optimizer, where its size matters (see the class docstring).
        weight = self.regular_scale / max(sum(f.numel() for f in factors.values()), 1)
        evaluator.patch_loss(lambda loss: loss + weight * sum(f.abs().sum() for f in factors.values()))
        if extra:
            own = torch.optim.Adam(extra, lr=1e-2)
            evaluator.before_optimizer_step(own.step)
            evaluator.after_optimizer_step(own.zero_grad)

        def record() -> None:
            for key, factor in factors.items():
                self.stats[key] = factor.detach().abs().double().clone()

        evaluator.after_optimizer_step(record)

    def _finish(self) -> None:
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        for key in self.stats:
            self.stats[key] = (self.stats[key] / world).float()
