"""What every long-running pruner shares: rounds of training, checkpoints, resume, progress.

A long run (LinearPruner, AGPPruner, LotteryTicketPruner, ADMMPruner) alternates
training chunks, each one call of the user's training loop through the evaluator, with
pruning steps. :class:`Rounds` runs the chunks with the masks held in place
(:class:`~secateurs.masks.MaskedInPlace`, so masked training costs what dense training
does), and, given a ``checkpoint_dir``, writes a checkpoint at every round boundary (the two newest are kept):

* the model's parameters and buffers and its attached masks,
* the evaluator's training state (for TorchEvaluator: its optimizers and LR schedulers),
* the pruner's own state (round, history, and what its algorithm keeps: Z and U,
  initial weights, ...),
* the torch, NumPy and Python RNG states,

as one safetensors file with a JSON description (:mod:`secateurs.checkpoint`: atomic,
checksummed, no pickle). Building the same pruner with the same ``checkpoint_dir`` and
calling ``compress()`` again restores the last checkpoint and goes on from the next
round. Each chunk starts a fresh call of the user's loop, in both the uninterrupted and
the resumed run, so with a seeded, deterministic loop the two end bit for bit alike.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from .._progress import Progress
from ..checkpoint import (
    CheckpointMismatch,
    checkpoints,
    load_checkpoint,
    module_state,
    prune_checkpoints,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from ..evaluators.base import Evaluator
from ..layers import LAYERS
from ..masks import Masks, MaskedInPlace, attach_masks, check_masks, detach_masks, get_masks
from ..sparsity import to_units
from ..targets import get_module
from .dependency import plan_dependencies


def check_steps(owner: str, steps: Any, epochs: Any, step_name: str = "training_steps",
                epoch_name: str = "training_epochs") -> None:
    """Exactly the budget a chunk of training needs: a positive int steps or epochs (or both)."""
    for arg, value in ((step_name, steps), (epoch_name, epochs)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ValueError(f"The {arg!r} parameter of {owner} must be a positive int or None; got {value!r}.")
    if steps is None and epochs is None:
        raise ValueError(f"{owner}: give {step_name!r} or {epoch_name!r}: how long each round trains.")


def check_evaluator(owner: str, evaluator: Any) -> Evaluator:
    if not isinstance(evaluator, Evaluator):
        raise TypeError(f"{owner}: 'evaluator' must be a secateurs Evaluator (TorchEvaluator, LightningEvaluator, "
                        f"TransformersEvaluator); got {type(evaluator).__name__}.")
    return evaluator


def require_ratios(lead: str, settings: Mapping[str, Any], why: str) -> None:
    """Refuse configs that give no ``sparse_ratio`` (a ``sparse_threshold``): ``lead +
    "config_list[i] give no 'sparse_ratio'" + why``."""
    missing = sorted({s.config_index for s in settings.values() if s.sparse_ratio is None})
    if missing:
        raise ValueError(f"{lead}config_list{missing} give no 'sparse_ratio'{why}")


def check_checkpoint_dir(owner: str, folder: Any) -> Path | None:
    if folder is None:
        return None
    if not isinstance(folder, (str, os.PathLike)):
        raise TypeError(f"The 'checkpoint_dir' parameter of {owner} must be a path or None; got {folder!r}.")
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise ValueError(f"The 'checkpoint_dir' of {owner} must be a folder; {str(path)!r} is a file.")
    return path


def realised(net: nn.Module, targets: list, masks: Masks | None = None) -> dict[str, float]:
    """``"module.target"`` -> the fraction of its units that are wholly masked."""
    masks = get_masks(net) if masks is None else masks
    out = {}
    for t in targets:
        mask = masks.get(t.module_name, {}).get(t.name)
        if mask is None:
            out[f"{t.module_name}.{t.name}"] = 0.0
            continue
        gone = to_units(mask.float(), t.blocks, pad=0.0).amax(1) == 0
        out[f"{t.module_name}.{t.name}"] = int(gone.sum()) / gone.numel()
    return out


def mean(values: Mapping[str, float]) -> float:
    return sum(values.values()) / max(len(values), 1)


@contextmanager
def ratios_of(pruner: Any, ratios: Mapping[int, float]) -> Iterator[None]:
    """Let ``pruner`` compute masks with these per-config ratios (config index -> ratio) for
    the duration of the block; its own settings, targets and plan come back after."""
    saved = pruner.settings, pruner.targets, pruner._plan
    settings = {n: dataclasses.replace(s, sparse_ratio=ratios[s.config_index]) for n, s in saved[0].items()}
    try:
        pruner.settings = settings
        pruner.targets = [t for s in settings.values() for t in pruner._targets_of(s)]
        families = [LAYERS.family_of(get_module(pruner.net, t.module_name)) is not None for t in pruner.targets]
        pruner._plan = plan_dependencies(pruner.targets, pruner.graph, families)
        yield
    finally:
        pruner.settings, pruner.targets, pruner._plan = saved


def _plain_name(key: str) -> str | None:
    """A state_dict key with masks attached as it reads without them (None: a mask buffer)."""
    parts = key.split(".")
    if "parametrizations" in parts:
        i = parts.index("parametrizations")
        rest = parts[i + 2:]
        if rest == ["original"]:
            return ".".join(parts[:i] + [parts[i + 1]])
        return None
    return key


def plain_tensors(net: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer by its name without masks (the stored tensor of a masked
    parameter), the live objects; mask buffers are left out."""
    out = {}
    for key, value in net.state_dict(keep_vars=True).items():
        name = _plain_name(key)
        if name is not None:
            out[name] = value
    return out


def score_of(evaluator: Evaluator, net: nn.Module) -> float | None:
    """The evaluator's score of ``net`` (higher is better), or None when it cannot evaluate."""
    if not evaluator.can_evaluate():
        return None
    with evaluator.session(net) as bound:
        return float(bound.evaluate())


def model_fingerprint(net: nn.Module) -> dict[str, Any]:
    """The model's class and the name, shape and dtype of each parameter and buffer."""
    tensors = {}
    for key, value in net.state_dict().items():
        name = _plain_name(key)
        if name is not None:
            tensors[name] = [list(value.shape), str(value.dtype).removeprefix("torch.")]
    # The class's own name only: a script run as __main__ and imported as a module is one model.
    return {"class": type(net).__qualname__, "tensors": tensors}


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


class Rounds:
    """The round machinery of one ``compress()`` call of a long-running pruner.

    Args:
        owner: the pruner's class name (for messages and the progress line).
        model: the model as the user gave it (maybe wrapped in DistributedDataParallel).
        evaluator: runs the training chunks.
        checkpoint_dir: where checkpoints go (None: none are written).
        fingerprint: what identifies the run (pruner, arguments, config_list); the
            model's tensors are added. A checkpoint whose fingerprint differs is refused.
        total: the number of rounds (for the progress line).
        progress: True, False, or None (only on a terminal).
        noun: what the progress line calls a round ("round", "iteration").
    """

    def __init__(self, owner: str, model: nn.Module, evaluator: Evaluator, checkpoint_dir: Path | None,
                 fingerprint: Mapping[str, Any], total: int, progress: bool | None, noun: str = "round") -> None:
        # The user's loop gets the model as given (a DDP wrapper all-reduces the gradients);
        # masks and checkpoints are of the module inside it.
        wrapped = isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel))
        net = model.module if wrapped else model
        self.owner, self.model, self.net, self.evaluator, self.folder = owner, model, net, evaluator, checkpoint_dir
        self.fingerprint = _jsonable({**fingerprint, "model": model_fingerprint(net),
                                      "evaluator": type(evaluator).__name__})
        self.bar = Progress(total, owner, progress, noun=noun)
        self.steps = 0  # optimizer steps run so far in this compress() (restored on resume)
        if self.folder is not None:
            # Under torch.distributed each rank keeps its own checkpoints (its RNG states differ).
            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                self.folder = self.folder / f"rank-{dist.get_rank()}"
            self.evaluator.training_state()  # a state that cannot be saved fails now, not after a round

    @staticmethod
    def check_progress(owner: str, progress: Any) -> None:
        Progress(1, owner, progress)  # raises TypeError for anything but True, False, None

    # -- training ---------------------------------------------------------------------
    def train(self, steps: int | None, epochs: int | None = None,
              install: Callable[[Evaluator], None] | None = None, require: bool = True) -> int:
        """One chunk: a fresh call of the user's loop for ``steps`` optimizer steps (or
        ``epochs``), masks held in place; ``install(evaluator)`` adds a pruner's hooks.

        Raises:
            RuntimeError: with ``require``, the loop stopped before ``steps`` steps.
        """
        held_in_place = MaskedInPlace(self.net, self.evaluator.training_optimizers())
        with self.evaluator.session(self.model) as evaluator, held_in_place as held:
            evaluator.after_optimizer_step(held.after_step)
            if install is not None:
                install(evaluator)
            evaluator.train(max_steps=steps, max_epochs=epochs)
            ran = evaluator.steps_run
        self.steps += ran
        if require and steps is not None and ran < steps:
            raise RuntimeError(
                f"{self.owner}: the training loop ran {ran} of the {steps} optimizer steps a round asks for; give "
                f"the loop enough data (or epochs) for that many steps, or ask for fewer."
            )
        if ran == 0:
            raise RuntimeError(f"{self.owner}: the training loop ran no optimizer step; does it call "
                               f"optimizer.step() on the loss from the training_step it is given?")
        return ran

    # -- checkpoints ------------------------------------------------------------------
    def save(self, round_: int, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any],
             done: bool = False) -> None:
        """Write the checkpoint of round ``round_`` (no-op without a checkpoint_dir)."""
        if self.folder is None:
            return
        out = dict(module_state(self.net))
        order = []
        for module_name, entry in get_masks(self.net).items():
            for name, mask in entry.items():
                out[f"masks/{module_name}/{name}"] = mask
                order.append([module_name, name])
        train_tensors, train_meta = self.evaluator.training_state()
        out.update({f"train/{k}": v for k, v in train_tensors.items()})
        rng_tensors, rng_meta = rng_state()
        out.update(rng_tensors)
        for key, value in tensors.items():
            out[f"pruner/{key}"] = value
        save_checkpoint(self.folder, round_, out, {
            "round": round_, "done": done, "steps": self.steps, "fingerprint": self.fingerprint, "masks": order,
            "training": train_meta, "rng": rng_meta, "pruner": dict(meta)})
        prune_checkpoints(self.folder, keep=2)  # disk use stays two checkpoints, however long the run

    def resume(self) -> tuple[int, bool, dict[str, torch.Tensor], dict[str, Any]] | None:
        """Restore the last checkpoint in ``checkpoint_dir``, if any.

        Returns:
            None, or (round, done, the pruner's tensors, the pruner's JSON state).

        Raises:
            ValueError: the last checkpoint is damaged or was written for another run;
                nothing has been changed then.
        """
        if self.folder is None:
            return None
        found = dict(checkpoints(self.folder))
        latest = max(found, default=-1)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # Every rank goes on from the same round: the newest that all of them finished.
            agreed = torch.tensor([latest], dtype=torch.int64)
            dist.all_reduce(agreed, op=dist.ReduceOp.MIN)
            latest = int(agreed)
            if latest >= 0 and latest not in found:
                raise ValueError(f"{self.owner}: cannot resume: the ranks' newest common checkpoint is round "
                                 f"{latest}, which {str(self.folder)!r} no longer holds.")
        if latest < 0:
            return None
        tensors, meta = read_checkpoint(self.owner, self.folder, found[latest], self.fingerprint)
        masks: Masks = {}
        model: dict[str, torch.Tensor] = {}
        train: dict[str, torch.Tensor] = {}
        own: dict[str, torch.Tensor] = {}
        for key, value in tensors.items():
            kind, _, rest = key.partition("/")
            if kind == "masks":
                module_name, _, name = rest.rpartition("/")
                masks.setdefault(module_name, {})[name] = value
            elif kind == "model":
                model[rest] = value
            elif kind == "train":
                train[rest] = value
            elif kind == "pruner":
                own[rest] = value
        ordered: Masks = {}  # attached in the run's order, so the state_dict lists its keys as the run's did
        for module_name, name in meta["masks"]:
            ordered.setdefault(module_name, {})[name] = masks[module_name][name]
        masks = ordered
        masks = check_masks(self.net, masks)
        detach_masks(self.net, apply=False)
        attach_masks(self.net, masks)
        self.net.load_state_dict(model, strict=True)
        self.evaluator.load_training_state(train, meta["training"])
        set_rng_state(tensors, meta["rng"])
        self.steps = int(meta["steps"])
        return int(meta["round"]), bool(meta["done"]), own, meta["pruner"]


def read_checkpoint(owner: str, folder: Path, path: Path, fingerprint: Mapping[str, Any]
                    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load a checkpoint of this run; another run's, or a damaged file, is a ValueError that
    says what to do (use another folder / delete the file to go on from the one before)."""
    try:
        return load_checkpoint(path, expect=fingerprint)
    except CheckpointMismatch as err:
        raise ValueError(f"{owner}: cannot resume from checkpoint_dir {str(folder)!r}: {err} "
                         f"Use another checkpoint_dir, or empty this one to start afresh.") from None
    except ValueError as err:
        raise ValueError(f"{owner}: cannot resume from checkpoint_dir {str(folder)!r}: {err} "
                         f"Delete that file to go on from the checkpoint before it.") from None


def state_tensors(prefix: str, values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}/{k}": v for k, v in values.items()}


def unprefix(prefix: str, values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    start = prefix + "/"
    return {k[len(start):]: v for k, v in values.items() if k.startswith(start)}


def history_tensors(history: list[dict[str, Any]]) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """Split a history whose entries may hold ``"masks"`` into tensors and JSON entries."""
    tensors, entries = {}, []
    for i, entry in enumerate(history):
        plain = {k: v for k, v in entry.items() if k != "masks"}
        for module_name, targets in entry.get("masks", {}).items():
            for name, mask in targets.items():
                tensors[f"history/{i}/{module_name}/{name}"] = mask
        entries.append(plain)
    return tensors, entries


def history_from(tensors: Mapping[str, torch.Tensor], entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    history = [dict(e) for e in entries]
    for entry in history:  # JSON made the config indices strings
        if isinstance(entry.get("sparse_ratio"), dict):
            entry["sparse_ratio"] = {int(k): v for k, v in entry["sparse_ratio"].items()}
    for key, mask in tensors.items():
        if key.startswith("history/"):
            _, i, rest = key.split("/", 2)
            module_name, _, name = rest.rpartition("/")
            history[int(i)].setdefault("masks", {}).setdefault(module_name, {})[name] = mask
    return history


def copy_masks(masks: Masks) -> Masks:
    return {m: {t: v.detach().cpu().clone() for t, v in e.items()} for m, e in masks.items()}
