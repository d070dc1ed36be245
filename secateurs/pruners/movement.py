"""MovementPruner: learn which weights to keep from how fine-tuning moves them.

Sanh, Wolf & Rush, "Movement Pruning: Adaptive Sparsity by Fine-Tuning", NeurIPS 2020
(arXiv 2005.07683).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.utils import parametrize

from .._registry import PRUNERS
from ..evaluators.base import Evaluator
from ..masks import MaskDict, Masks, _drop_parametrization, _grad_accumulators_kept, attach_masks, get_masks
from ..schedules import agp
from ..sparsity import allocate, grid_shape, to_units
from ..targets import get_module
from .base import Pruner, Target
from .longrun import Rounds, check_checkpoint_dir, check_evaluator, history_from, mean, realised, unprefix

Key = tuple[str, str]


class _StraightThrough(torch.autograd.Function):
    """``weight * keep`` forward; backward gives the weight ``grad * keep`` and the score
    ``grad * weight`` (summed over each block): the straight-through estimator of the paper
    (eq. 3), whose score gradient is that of ``weight * score`` at the masked weight."""

    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor, score: torch.Tensor, keep: torch.Tensor,
                blocks: tuple[int, ...]) -> torch.Tensor:
        ctx.save_for_backward(weight, keep)
        ctx.blocks, ctx.grid, ctx.score_dtype = blocks, tuple(score.shape), score.dtype
        return weight * keep

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        weight, keep = ctx.saved_tensors
        grad_weight = grad * keep if ctx.needs_input_grad[0] else None
        grad_score = None
        if ctx.needs_input_grad[1]:
            moved = grad * weight
            if any(b != 1 for b in ctx.blocks):
                moved = to_units(moved, ctx.blocks, pad=0.0).sum(1).reshape(ctx.grid)
            grad_score = moved.to(ctx.score_dtype)
        return grad_weight, grad_score, None, None


class MovementMask(nn.Module):
    """The parametrization of a weight while :class:`MovementPruner` trains: the module
    computes with ``weight * keep``, where ``keep`` (a buffer the pruner recomputes after
    every optimizer step) comes from ``score``, a parameter of one value per unit."""

    def __init__(self, score: nn.Parameter, blocks: tuple[int, ...], keep: torch.Tensor) -> None:
        super().__init__()
        self.score = score
        self.blocks = blocks
        self.register_buffer("keep", keep, persistent=False)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return _StraightThrough.apply(weight, self.score, self.keep, self.blocks)


def _int_at_least(owner: str, name: str, value: Any, low: int, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"The {name!r} parameter of {owner} must be {what}; got {value!r}.")


def _just_above(threshold: float) -> float:
    """The smallest float32 strictly above ``threshold``: for float32 ``s``, ``s >= it`` is ``s > threshold``
    (the allocator keeps scores ``>=`` a threshold; the paper keeps ``sigmoid(score) > threshold``)."""
    x = torch.tensor(threshold, dtype=torch.float32)
    if float(x) <= threshold:
        x = torch.nextafter(x, torch.tensor(math.inf))
    return float(x)


def _drop_group(optimizer: torch.optim.Optimizer, params: list[nn.Parameter]) -> None:
    ids = {id(p) for p in params}
    optimizer.param_groups[:] = [g for g in optimizer.param_groups if not any(id(p) in ids for p in g["params"])]
    for p in params:
        optimizer.state.pop(p, None)


@PRUNERS.register("movement")
class MovementPruner(Pruner):
    """Movement pruning: learn a score per weight (or block) from how fine-tuning moves it; keep the top.

    Each selected weight ``W`` gets a score ``S``, one value per unit (an element by
    default; a block, row or column with ``granularity``), initialised to 0 and trained by
    the user's optimizer alongside the model. The module computes with ``W * M(S)``; the
    straight-through estimator passes the gradient ``dL/dW' * W`` (``W'`` the masked
    weight, summed over each block) to ``S``, so with plain SGD at learning rate ``lr``
    the score after ``k`` steps is ``-lr * sum_t (dL/dW'_t * W_t)``: weights moving away
    from zero gain score, weights moving towards it lose it. ``M`` is recomputed after
    every optimizer step:

    * hard mode (a config with ``sparse_ratio`` ``r``): the units with the highest scores
      are kept; the pruned fraction after ``t`` optimizer steps is 0 up to
      ``warmup_step`` (``w``), ``r * (1 - (1 - (t - w) / (c - w)) ** 3)`` up to
      ``cooldown_begin_step`` (``c``; the AGP cubic ramp, :func:`secateurs.schedules.agp`)
      and ``r`` after, counted and allocated like every other pruner's ratio
      (``floor(n * r)``, ``global_group_id``, ``min/max_sparse_ratio``);
    * soft mode (``sparse_threshold`` ``tau``): from ``warmup_step`` on, the units with
      ``sigmoid(S) > tau`` are kept, and ``lambda_t * mean(sigmoid(S))`` (the mean over
      every score of every soft-mode target together) is added to the loss, with
      ``lambda_t = regular_scale * (1 - (1 - (t - w) / (c - w)) ** 3)`` between ``w`` and
      ``c``, 0 before and ``regular_scale`` after.

    Before ``warmup_step`` nothing is pruned. Units can come back while training (a score
    that rises again); units masked before ``compress()`` (by an earlier pruner) stay
    masked and count first among the pruned ones. At the end the final masks (the top
    scores at the final ratio, or the threshold) are attached as plain masks, the scores
    leave the model and the optimizer, and :attr:`scores` keeps them.

    Args:
        model: the model to prune (in place).
        config_list: each entry needs ``sparse_ratio`` (hard) or ``sparse_threshold``
            (soft); ``granularity`` is per element unless it names a block shape or
            ``"out_channel"`` / ``"in_channel"`` / ``"per_channel"``.
        evaluator: runs the training (TorchEvaluator, LightningEvaluator,
            TransformersEvaluator). With a TorchEvaluator the scores are added to its
            first optimizer as a parameter group for the run (the optimizer's defaults:
            its learning rate and other settings); the frameworks' own optimizers see them
            as parameters of the model.
        warmup_step: optimizer steps before pruning starts (an int >= 0).
        cooldown_begin_step: the step at which the final sparsity (hard) or the full
            ``regular_scale`` (soft) is reached (an int > ``warmup_step``).
        regular_scale: the weight of the soft-mode regulariser (a number >= 0).
        dummy_input: example inputs for dependency-aware masks; defaults to the
            evaluator's.
        checkpoint_dir: a folder for a checkpoint after every chunk of training (the
            scores, the model, the training state); ``compress()`` with the same folder
            resumes.
        checkpoint_steps: with ``max_steps``, train in chunks of this many optimizer
            steps, each one call of the user's loop ending in a checkpoint (None: one
            chunk). With ``max_epochs`` every epoch is a chunk.
        progress: a line per chunk on stderr; None (the default) only on a terminal.

    Attributes:
        scores: ``(module name, target name)`` -> the scores, of the unit grid's shape.
        step: optimizer steps run in ``compress()``.
        history: one dict per chunk: ``"round"``, ``"step"``, ``"sparse_ratio"`` (config
            index -> the ratio in force), ``"regular_scale"`` and ``"sparsity"``
            (``"module.target"`` -> fraction of its units pruned).

    Example:
        >>> import torch, torch.nn as nn, torch.nn.functional as F
        >>> from secateurs import TorchEvaluator
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <...>
        >>> model = nn.Sequential(nn.Linear(10, 4))
        >>> data = [(torch.randn(8, 10), torch.randint(0, 4, (8,))) for _ in range(4)]
        >>> def loop(model, optimizers, training_step, lr_schedulers, max_steps, max_epochs):
        ...     for batch in data * 5:
        ...         optimizers.zero_grad()
        ...         training_step(batch, model).backward()
        ...         optimizers.step()
        >>> ev = TorchEvaluator(loop, torch.optim.SGD(model.parameters(), lr=0.1),
        ...                     lambda batch, model: F.cross_entropy(model(batch[0]), batch[1]))
        >>> config = [{"op_types": ["Linear"], "sparse_ratio": 0.75}]
        >>> _, masks = MovementPruner(model, config, ev, warmup_step=2, cooldown_begin_step=6).compress(max_steps=8)
        >>> int(masks["0"]["weight"].sum())
        10
    """

    needs = ("evaluator", "warmup_step", "cooldown_begin_step")
    default_granularity = "element"

    def __init__(self, model: nn.Module, config_list: list[dict[str, Any]], evaluator: Evaluator, warmup_step: int,
                 cooldown_begin_step: int, regular_scale: float = 1.0, *, dummy_input: Any = None,
                 checkpoint_dir: str | os.PathLike | None = None, checkpoint_steps: int | None = None,
                 progress: bool | None = None) -> None:
        name = type(self).__name__
        check_evaluator(name, evaluator)
        _int_at_least(name, "warmup_step", warmup_step, 0, "an int >= 0")
        _int_at_least(name, "cooldown_begin_step", cooldown_begin_step, warmup_step + 1,
                      f"an int > warmup_step ({warmup_step})")
        if isinstance(regular_scale, bool) or not isinstance(regular_scale, numbers.Real) \
                or not math.isfinite(regular_scale) or regular_scale < 0:
            raise ValueError(f"The 'regular_scale' parameter of {name} must be a number >= 0; got {regular_scale!r}.")
        if checkpoint_steps is not None:
            _int_at_least(name, "checkpoint_steps", checkpoint_steps, 1, "a positive int or None")
        if isinstance(config_list, (list, tuple)):
            for i, config in enumerate(config_list):
                if isinstance(config, Mapping) and config.get("granularity") == "head":
                    raise ValueError(
                        f"config_list[{i}]: {name} has no 'granularity' 'head'. To prune whole attention heads, "
                        f"select the query, key and value projections with 'granularity' 'out_channel' and give "
                        f"dummy_input: the trace couples the channels of each head, so a head is scored (the sum "
                        f"of its channels' scores) and pruned as one unit.")
        super().__init__(model, config_list, dummy_input=dummy_input if dummy_input is not None
                         else evaluator.dummy_input)
        for s in self.settings.values():
            tau = s.sparse_threshold
            if tau is not None and not 0 < tau < 1:
                raise ValueError(f"config_list[{s.config_index}]: {name} compares 'sparse_threshold' with "
                                 f"sigmoid(score), so it must be a number in (0, 1); got {tau!r}.")
            if s.global_group_id is not None and s.sparse_ratio is not None and s.min_sparse_ratio:
                raise ValueError(f"config_list[{s.config_index}]: {name} ramps a global group's ratio up from 0, "
                                 f"which 'min_sparse_ratio' ({s.min_sparse_ratio}) forbids; leave it out.")
        self.evaluator = evaluator
        self.warmup_step, self.cooldown_begin_step = int(warmup_step), int(cooldown_begin_step)
        self.regular_scale = float(regular_scale)
        self.checkpoint_dir = check_checkpoint_dir(name, checkpoint_dir)
        self.checkpoint_steps = checkpoint_steps
        Rounds.check_progress(name, progress)
        self.progress = progress
        self.scores: dict[Key, torch.Tensor] = {
            (t.module_name, t.name): torch.zeros(grid_shape(t.shape, t.blocks), dtype=self._score_dtype(t),
                                                 device=self._weight(t).device)
            for t in self.targets}
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self._prior: Masks = {}
        self._installed: dict[Key, MovementMask] = {}
        self._check_optimizer = False

    # -- schedules --------------------------------------------------------------------
    def _ramp(self, step: int) -> float:
        """0 up to warmup_step, ``1 - (1 - x) ** 3`` of the fraction ``x`` of the ramp done, 1 from cooldown_begin_step."""
        w, c = self.warmup_step, self.cooldown_begin_step
        if step <= w:
            return 0.0
        if step >= c:
            return 1.0
        return 1.0 - (1.0 - (step - w) / (c - w)) ** 3

    def sparse_ratio_at(self, step: int) -> dict[int, float]:
        """The pruned fraction of each hard-mode config (config index -> ratio) after ``step`` optimizer steps."""
        w, c = self.warmup_step, self.cooldown_begin_step
        out = {}
        for s in self.settings.values():
            if s.sparse_ratio is not None:
                out[s.config_index] = 0.0 if step <= w else agp(min(step, c) - w, c - w, s.sparse_ratio)
        return out

    def regular_scale_at(self, step: int) -> float:
        """The soft-mode regulariser's weight after ``step`` optimizer steps."""
        return self.regular_scale * self._ramp(step)

    # -- scores and masks -------------------------------------------------------------
    def _weight(self, t: Target) -> torch.Tensor:
        return getattr(get_module(self.net, t.module_name), t.name)

    def _score_dtype(self, t: Target) -> torch.dtype:
        dtype = self._weight(t).dtype
        return torch.float32 if dtype in (torch.float16, torch.bfloat16) or not dtype.is_floating_point else dtype

    def _unit_scores(self, t: Target, existing: Masks) -> torch.Tensor:
        score = self.scores[(t.module_name, t.name)].detach().reshape(-1).float()
        if t.setting.sparse_threshold is not None:
            score = torch.sigmoid(score)
        old = existing.get(t.module_name, {}).get(t.name)
        if old is not None:
            gone = to_units(old.float(), t.blocks, pad=0.0).amax(1) == 0
            score = score.masked_fill(gone.to(score.device), -math.inf)
        return score

    def _masks_at(self, step: int | None, existing: Masks) -> Masks:
        """The masks after ``step`` optimizer steps (None: the final ones) from the current scores."""
        slots = self._slots(existing)
        ratios = self.sparse_ratio_at(step) if step is not None else {}
        for slot in slots:
            s = slot.setting
            if step is not None and step < self.warmup_step:
                slot.setting = dataclasses.replace(s, sparse_ratio=0.0, sparse_threshold=None)
            elif s.sparse_threshold is not None:
                slot.setting = dataclasses.replace(s, sparse_threshold=_just_above(s.sparse_threshold))
            elif step is not None:
                slot.setting = dataclasses.replace(s, sparse_ratio=ratios[s.config_index])
        return self._masks_from_keeps(slots, allocate(slots), existing)

    def calculate_masks(self) -> Masks:
        """The final masks from the current :attr:`scores` (the top scores at each config's
        ``sparse_ratio``, or ``sigmoid(score) > sparse_threshold``), AND-ed with the masks
        attached; not attached."""
        existing = {m: dict(e) for m, e in get_masks(self.net).items()}
        for m, e in self._prior.items():
            existing.setdefault(m, {}).update(e)
        return self._masks_at(None, existing)

    def regulariser(self) -> torch.Tensor:
        """``mean(sigmoid(S))`` over every score of the soft-mode targets (0 without them)."""
        soft = [self.scores[(t.module_name, t.name)] for t in self.targets if t.setting.sparse_threshold is not None]
        if not soft:
            return torch.zeros(())
        total = torch.stack([torch.sigmoid(s).sum() for s in soft]).sum()
        return total / sum(s.numel() for s in soft)

    # -- the parametrizations -----------------------------------------------------------
    def _install(self, params: Mapping[Key, nn.Parameter]) -> None:
        with _grad_accumulators_kept():
            for t in self.targets:
                key = (t.module_name, t.name)
                module = get_module(self.net, t.module_name)
                weight = getattr(module, t.name)
                keep = torch.ones(t.shape, dtype=weight.dtype, device=weight.device)
                self._installed[key] = MovementMask(params[key], t.blocks, keep)
                parametrize.register_parametrization(module, t.name, self._installed[key], unsafe=True)
        self._refresh()

    def _uninstall(self) -> None:
        for (module_name, name) in list(self._installed):
            _drop_parametrization(get_module(self.net, module_name), name, apply=False)
            del self._installed[(module_name, name)]

    @torch.no_grad()
    def _refresh(self) -> Masks:
        masks = self._masks_at(self.step, self._prior)
        for (module_name, name), movement in self._installed.items():
            movement.keep.copy_(masks[module_name][name])
        return masks

    def _after_step(self) -> None:
        self.step += 1
        if self.step == 1 and self._check_optimizer:
            self._check_trained()
        self._refresh()

    def _check_trained(self) -> None:
        params = [m.score for m in self._installed.values()]
        moved = any(bool((p != 0).any()) for p in params)
        graded = any(p.grad is not None and bool((p.grad != 0).any()) for p in params)
        if graded and not moved:
            raise RuntimeError(
                f"{type(self).__name__}: the optimizer step left every score at 0 although they have gradients: "
                f"the optimizer does not train them. With Lightning, configure_optimizers must optimise self.parameters() (the scores are parameters "
                f"of the model while it trains); with a Trainer, leave trainer.optimizer unset so it builds one.")

    def _average_grads(self) -> None:
        """Average the scores' gradients over the ranks: they joined the model after
        DistributedDataParallel wrapped it, so it does not reduce them itself."""
        grads = [m.score.grad for m in self._installed.values() if m.score.grad is not None]
        if grads:
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            flat /= dist.get_world_size()
            for g, part in zip(grads, flat.split([g.numel() for g in grads])):
                g.copy_(part.reshape(g.shape))

    def _hooks(self, evaluator: Evaluator) -> None:
        evaluator.after_optimizer_step(self._after_step)
        if self.net is not self.model and dist.is_available() and dist.is_initialized() \
                and dist.get_world_size() > 1:
            evaluator.before_optimizer_step(self._average_grads)
        if any(t.setting.sparse_threshold is not None for t in self.targets):
            def regularised(loss: torch.Tensor) -> torch.Tensor:
                scale = self.regular_scale_at(self.step)
                return loss + scale * self.regulariser().to(loss.device) if scale > 0 else loss
            evaluator.patch_loss(regularised)

    # -- the run ------------------------------------------------------------------------
    def _chunks(self, max_steps: int | None, max_epochs: int | None) -> list[tuple[int | None, int | None]]:
        if max_epochs is not None:
            return [(max_steps, 1)] * max_epochs
        size = self.checkpoint_steps or max_steps
        return [(min(size, max_steps - i), None) for i in range(0, max_steps, size)]

    def _check_budget(self, max_steps: Any, max_epochs: Any) -> None:
        name = type(self).__name__
        if max_steps is None and max_epochs is None:
            raise ValueError(f"{name}.compress: give 'max_steps' or 'max_epochs': how long to train.")
        if max_steps is not None:
            _int_at_least(f"{name}.compress", "max_steps", max_steps, self.cooldown_begin_step,
                          f"an int >= cooldown_begin_step ({self.cooldown_begin_step}), so that the ramp ends, or None")
        if max_epochs is not None:
            _int_at_least(f"{name}.compress", "max_epochs", max_epochs, 1, "a positive int or None")
            if self.checkpoint_steps is not None:
                raise ValueError(f"{name}.compress: 'checkpoint_steps' applies to 'max_steps' only; with "
                                 f"'max_epochs' every epoch is one chunk, checkpointed after it.")

    def compress(self, max_steps: int | None = None, max_epochs: int | None = None) -> tuple[nn.Module, Masks]:
        """Train with the scores, pruning as they say, and attach the final masks.

        Args:
            max_steps: optimizer steps to train, at least ``cooldown_begin_step``.
            max_epochs: epochs to train (each one call of the user's loop); with
                ``max_steps`` too, training stops at whichever comes first. Should it stop
                before ``cooldown_begin_step``, the final masks still realise the full ratio.

        Returns:
            The model (plain masks attached in place, no scores left in it) and the masks.

        Raises:
            ValueError: neither limit, or a bad one (before any training); the
                checkpoint in ``checkpoint_dir`` is damaged or of another run.
            RuntimeError: the training loop stopped before ``max_steps`` steps, or the
                optimizer does not train the scores.
        """
        self._check_budget(max_steps, max_epochs)
        name = type(self).__name__
        chunks = self._chunks(max_steps, max_epochs)
        rounds = Rounds(name, self.model, self.evaluator, self.checkpoint_dir, {
            "pruner": self.registry_name, "config_list": self.config_list,
            "arguments": {"warmup_step": self.warmup_step, "cooldown_begin_step": self.cooldown_begin_step,
                          "regular_scale": self.regular_scale, "max_steps": max_steps, "max_epochs": max_epochs,
                          "checkpoint_steps": self.checkpoint_steps, "dummy_input": self.graph is not None}},
            len(chunks), self.progress, noun="chunk")
        keys = [(t.module_name, t.name) for t in self.targets]
        attached = get_masks(self.net)
        self._prior = {}
        for m, n in keys:
            if n in attached.get(m, {}):
                module = get_module(self.net, m)
                if len(module.parametrizations[n]) != 1:
                    raise ValueError(f"{name}: {m}.{n} has other parametrizations besides its mask; remove those "
                                     f"first.")
                self._prior.setdefault(m, {})[n] = attached[m][n].detach().clone()
            elif parametrize.is_parametrized(get_module(self.net, m), n):
                raise ValueError(f"{name}: {m}.{n} is parametrized; {name} trains plain or masked weights only.")
        params = {k: nn.Parameter(torch.zeros_like(self.scores[k])) for k in keys}
        optimizers = self.evaluator.training_optimizers()
        optimizer = optimizers[0] if optimizers else None
        prior = self._prior
        for m, e in prior.items():
            for n in e:
                _drop_parametrization(get_module(self.net, m), n, apply=False)
        if optimizer is not None:
            optimizer.add_param_group({"params": list(params.values())})
        # An optimizer the framework builds must find the scores among the model's parameters.
        self._check_optimizer = optimizer is None
        self.scores = dict(params)
        self.step, self.history, first, finished = 0, [], 1, False
        masks: Masks | None = None
        try:
            resumed = rounds.resume()
            if resumed is not None:
                done_round, finished, tensors, meta = resumed
                with torch.no_grad():
                    for k, v in unprefix("scores", tensors).items():
                        m, _, n = k.rpartition("/")
                        params[(m, n)].copy_(v)
                self._prior = prior = {}
                for k, v in unprefix("prior", tensors).items():
                    m, _, n = k.rpartition("/")
                    prior.setdefault(m, {})[n] = v.to(self._weight(self.targets[keys.index((m, n))]).device)
                self.history = history_from({}, meta["history"])
                self.step = int(meta["step"])
                first = done_round + 1
            for k in range(first, len(chunks) + 1) if not finished else ():
                steps, epochs = chunks[k - 1]
                if steps is not None and epochs is not None:
                    steps -= self.step
                self._install(params)
                try:
                    rounds.train(steps, epochs, install=self._hooks, require=epochs is None)
                    live = self._refresh()
                finally:
                    self._uninstall()
                finished = k == len(chunks) or (max_steps is not None and self.step >= max_steps)
                if finished:
                    masks = self.calculate_masks()
                    attach_masks(self.net, masks)
                    self._prior = {}
                    live = masks
                sparsity = realised(self.net, self.targets, live)
                ratio = self.sparse_ratio_at(self.step)
                self.history.append({"round": k, "step": self.step, "sparse_ratio": ratio,
                                     "regular_scale": self.regular_scale_at(self.step), "sparsity": sparsity})
                rounds.bar.update(k, step=self.step, sparsity=mean(sparsity))
                tensors = {f"scores/{m}/{n}": p.detach() for (m, n), p in params.items()}
                tensors.update({f"prior/{m}/{n}": v for m, e in self._prior.items() for n, v in e.items()})
                rounds.save(k, tensors, {"history": self.history, "step": self.step}, done=finished)
                if finished:
                    break
        except BaseException:
            self._uninstall()
            if self._prior:
                attach_masks(self.net, self._prior)
            raise
        finally:
            rounds.bar.close()
            if optimizer is not None:
                _drop_group(optimizer, list(params.values()))
            self.scores = {k: p.detach() for k, p in params.items()}
        self._prior = {}
        self.masks = MaskDict(masks if masks is not None else get_masks(self.net))
        self.masks.trace = self.graph
        return self.model, self.masks

    # -- saving and restoring -----------------------------------------------------------
    def _extra_state(self) -> dict[str, torch.Tensor]:
        return {f"scores/{m}/{n}": s.detach().cpu().clone() for (m, n), s in self.scores.items()}

    def _extra_state_kinds(self) -> tuple[str, ...]:
        return ("scores",)

    def _load_extra_state(self, state: Mapping[str, torch.Tensor]) -> None:
        name = type(self).__name__
        found = {}
        for key, value in state.items():
            _, _, rest = key.partition("/")
            module_name, _, target = rest.rpartition("/")
            found[(module_name, target)] = value
        want = set(self.scores)
        if set(found) != want:
            raise ValueError(f"{name}.load_state_dict: the scores are of {sorted(found)}, but this pruner has "
                             f"targets {sorted(want)}.")
        for key, value in found.items():
            if tuple(value.shape) != tuple(self.scores[key].shape):
                raise ValueError(f"{name}.load_state_dict: the scores of {key[0]}.{key[1]} have shape "
                                 f"{tuple(value.shape)}; its unit grid is {tuple(self.scores[key].shape)}.")
        self.scores = {k: found[k].to(self.scores[k]) for k in self.scores}
