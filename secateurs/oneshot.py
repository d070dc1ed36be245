"""``secateurs.prune``: one call from a model to a pruned (and sped-up) model and its report."""

from __future__ import annotations

import copy
import inspect
import math
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch.nn as nn

from ._errors import did_you_mean
from ._registry import PRUNERS

_CONSTRUCTION = ("self", "model", "config_list", "evaluator", "pruner", "dummy_input", "progress")


@dataclass(frozen=True)
class LayerReport:
    """One layer of a :class:`PruneReport`.

    Attributes:
        name / type: the module and its class name.
        config_index / config: the config_list entry that selected it (None: it follows
            another layer's channels, or was not selected).
        sparsity: pruned fraction of its weight mask (0 without one).
        params_before / params_after: its parameters in the dense and the sped-up model.
        macs_before / macs_after: its multiply-accumulates per forward on the example input.
    """

    name: str
    type: str
    config_index: int | None
    config: dict[str, Any] | None
    sparsity: float
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int

    @property
    def kept(self) -> float:
        return 1.0 - self.sparsity


@dataclass
class PruneReport:
    """What :func:`prune` (and ``secateurs prune``) did.

    Attributes:
        pruner: the registry name of the pruner.
        config_list: the config_list as given.
        layers: per layer with a mask or a MACs count.
        params_before / params_after: whole model, dense and after speedup (when there was
            no example input to speed up with, after equals before).
        nonzero_params: parameters left non-zero by the masks (unstructured pruning lowers
            this, not ``params_after``).
        macs_before / macs_after: per forward on the example input (None without one).
        sped_up: whether the returned model is the sped-up one.
        max_abs_diff / max_rel_diff: the speedup's largest output difference from the
            masked model (NaN without speedup).
        speedup_notes: what the speedup kept and why.
        score_before / score_after: the user's score of the dense and the pruned model
            (``secateurs prune --evaluate``; None otherwise).
        masks: the masks the pruner computed (not part of ``to_dict``).
    """

    pruner: str
    config_list: list[dict[str, Any]]
    layers: list[LayerReport]
    params_before: int
    params_after: int
    nonzero_params: int
    macs_before: int | None
    macs_after: int | None
    sped_up: bool
    max_abs_diff: float = math.nan
    max_rel_diff: float = math.nan
    speedup_notes: list[str] = field(default_factory=list)
    score_before: float | None = None
    score_after: float | None = None
    masks: dict | None = field(default=None, repr=False, compare=False)

    @property
    def params_ratio(self) -> float:
        return self.params_after / self.params_before if self.params_before else 1.0

    @property
    def macs_ratio(self) -> float | None:
        if self.macs_before is None or self.macs_after is None or not self.macs_before:
            return None
        return self.macs_after / self.macs_before

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "secateurs.prune-report/1",
            "pruner": self.pruner,
            "config_list": self.config_list,
            "params_before": self.params_before, "params_after": self.params_after,
            "nonzero_params": self.nonzero_params,
            "macs_before": self.macs_before, "macs_after": self.macs_after,
            "params_ratio": self.params_ratio, "macs_ratio": self.macs_ratio,
            "sped_up": self.sped_up,
            "max_abs_diff": None if math.isnan(self.max_abs_diff) else self.max_abs_diff,
            "max_rel_diff": None if math.isnan(self.max_rel_diff) else self.max_rel_diff,
            "speedup_notes": list(self.speedup_notes),
            "score_before": self.score_before, "score_after": self.score_after,
            "layers": [asdict(layer) | {"kept": layer.kept} for layer in self.layers],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PruneReport:
        if not isinstance(data, Mapping) or data.get("format") != "secateurs.prune-report/1":
            raise ValueError("not a secateurs prune report (format 'secateurs.prune-report/1').")
        fields = {f for f in LayerReport.__dataclass_fields__}
        layers = [LayerReport(**{k: v for k, v in row.items() if k in fields}) for row in data["layers"]]
        nan = math.nan
        return cls(data["pruner"], list(data["config_list"]), layers, data["params_before"], data["params_after"],
                   data["nonzero_params"], data["macs_before"], data["macs_after"], data["sped_up"],
                   nan if data.get("max_abs_diff") is None else data["max_abs_diff"],
                   nan if data.get("max_rel_diff") is None else data["max_rel_diff"],
                   list(data.get("speedup_notes", [])), data.get("score_before"), data.get("score_after"))

    def summary(self) -> str:
        """The totals in two lines."""
        lines = [f"{self.pruner}: parameters {self.params_before:,} -> {self.params_after:,} "
                 f"({self.params_ratio:.1%}), non-zero {self.nonzero_params:,}"]
        if self.macs_ratio is not None:
            lines[0] += f"; MACs {self.macs_before:,} -> {self.macs_after:,} ({self.macs_ratio:.1%})"
        if self.sped_up:
            lines.append(f"sped up: largest output difference from the masked model {self.max_abs_diff:.3g} absolute, "
                         f"{self.max_rel_diff:.3g} relative")
        else:
            lines.append("not sped up: the masks are attached; the 'after' numbers are what ModelSpeedup gives")
        if self.score_before is not None and self.score_after is not None:
            lines.append(f"score {self.score_before:.6g} -> {self.score_after:.6g}")
        return "\n".join(lines)

    def table_rows(self) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
        header = ("layer", "type", "config", "sparsity", "params before", "params after", "MACs before", "MACs after")
        rows = [(r.name, r.type, "-" if r.config_index is None else f"[{r.config_index}]", f"{r.sparsity:.2%}",
                 f"{r.params_before:,}", f"{r.params_after:,}", f"{r.macs_before:,}", f"{r.macs_after:,}")
                for r in self.layers]
        return header, rows

    def to_markdown(self) -> str:
        header, rows = self.table_rows()
        lines = ["# Pruning report", "", *[f"{line}  " for line in self.summary().splitlines()], "",
                 "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines += ["", "## Config list", ""]
        lines += [f"- [{i}] `{entry}`" for i, entry in enumerate(self.config_list)]
        if self.speedup_notes:
            lines += ["", "## Speedup notes", ""] + [f"- {note}" for note in self.speedup_notes]
        return "\n".join(lines) + "\n"

    def __str__(self) -> str:
        from .cli._common import table

        header, rows = self.table_rows()
        return self.summary() + "\n\n" + table(header, rows, right=(3, 4, 5, 6, 7))

    def plot(self, folder: str | Path) -> list[Path]:
        """Write ``kept_fraction.png`` (per layer) and ``params_macs.png`` (before/after per
        layer) into ``folder``; returns their paths. Needs matplotlib."""
        try:
            import matplotlib
        except ImportError:
            raise ImportError("PruneReport.plot needs matplotlib (pip install matplotlib).") from None
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        folder = Path(folder)
        masked = [r for r in self.layers if r.config_index is not None or r.sparsity > 0]
        paths = []
        height = max(3.0, 0.22 * len(masked) + 1.2)
        fig, ax = plt.subplots(figsize=(7, height))
        ax.barh([r.name for r in masked], [r.kept for r in masked], color="tab:green")
        ax.set_xlim(0, 1)
        ax.invert_yaxis()
        ax.set_xlabel("kept fraction of the weight")
        ax.set_title(f"{self.pruner}: kept fraction per layer")
        fig.tight_layout()
        paths.append(folder / "kept_fraction.png")
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)

        counted = [r for r in self.layers if (r.macs_before or r.params_before) and "Norm" not in r.type]
        names = [r.name for r in counted]
        fig, axes = plt.subplots(1, 2, figsize=(11, max(3.0, 0.22 * len(counted) + 1.2)), sharey=True)
        y = range(len(counted))
        for ax, (title, before, after) in zip(axes, (
                ("parameters", [r.params_before for r in counted], [r.params_after for r in counted]),
                ("MACs", [r.macs_before for r in counted], [r.macs_after for r in counted]))):
            ax.barh([i - 0.2 for i in y], before, height=0.4, label="before", color="tab:gray")
            ax.barh([i + 0.2 for i in y], after, height=0.4, label="after", color="tab:blue")
            ax.set_title(f"{title} per layer")
            ax.legend(loc="lower right")
        axes[0].set_yticks(list(y), names)
        axes[0].invert_yaxis()
        fig.tight_layout()
        paths.append(folder / "params_macs.png")
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)
        return paths


def _signature_params(cls: type) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(cls.__init__).parameters)


def required_arguments(cls: type) -> list[str]:
    """The constructor arguments of ``cls`` that :func:`prune` cannot fill in itself."""
    return [n for n, p in _signature_params(cls).items()
            if n not in _CONSTRUCTION and p.default is inspect.Parameter.empty
            and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _check_arguments(cls: type, given: Mapping[str, Any], owner: str) -> None:
    params = _signature_params(cls)
    known = [n for n in params if n not in _CONSTRUCTION]
    for name in given:
        if name not in known:
            raise TypeError(f"{owner}: {cls.__name__} has no argument {name!r}{did_you_mean(name, known)}; "
                            f"its arguments: {', '.join(known) or 'none'}.")
    missing = [n for n in required_arguments(cls) if n not in given]
    if missing:
        raise TypeError(f"{owner}: {cls.__name__} needs {', '.join(repr(m) for m in missing)} "
                        "(pruner arguments; on the command line: --param NAME=VALUE).")


def build_pruner(model: nn.Module, name: str, config_list: list[dict[str, Any]], *, dummy_input: Any = None,
                 evaluator: Any = None, progress: bool | None = None, pruner_args: Mapping[str, Any] | None = None):
    """The registered pruner ``name`` on ``model``, given only the arguments its constructor takes."""
    owner = "secateurs.prune"
    cls = PRUNERS.get(name)
    args = dict(pruner_args or {})
    params = _signature_params(cls)
    if "pruner" in params:  # Linear / AGP schedule a one-shot pruner built here
        inner_name = args.pop("pruning_algorithm", "level")
        inner_cls = PRUNERS.get(inner_name)
        if "evaluator" in _signature_params(inner_cls) or "pruner" in _signature_params(inner_cls):
            raise ValueError(f"{owner}: {cls.__name__} schedules a one-shot pruner (level, l1norm, l2norm, fpgm); "
                             f"got pruning_algorithm={inner_name!r}.")
        _check_arguments(cls, args, owner)
        inner = build_pruner(model, inner_name, config_list, dummy_input=dummy_input)
        extra = {"progress": progress} if "progress" in params else {}
        return cls(inner, evaluator=evaluator, **args, **extra)
    _check_arguments(cls, args, owner)
    kwargs: dict[str, Any] = dict(args)
    if "evaluator" in params:
        if evaluator is None and params["evaluator"].default is inspect.Parameter.empty:
            raise TypeError(f"{owner}: {cls.__name__} trains or scores the model, so it needs an evaluator "
                            "(a TorchEvaluator, LightningEvaluator, TransformersEvaluator; on the command line "
                            "--train / --evaluate).")
        kwargs["evaluator"] = evaluator
    elif evaluator is not None:
        raise TypeError(f"{owner}: {cls.__name__} is one-shot and takes no evaluator.")
    if "dummy_input" in params:
        kwargs["dummy_input"] = dummy_input
    if "progress" in params:
        kwargs["progress"] = progress
    return cls(model, config_list, **kwargs)


def _per_layer(rows: list[dict]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        entry = out.setdefault(row["name"], {"type": row["type"], "flops": 0, "params": row["params"]})
        entry["flops"] += row["flops"]  # a module called twice counts twice
    return out


def prune(model: nn.Module, pruner: str = "l1norm", config_list: list[dict[str, Any]] | None = None, *,
          sparse_ratio: float | None = None, op_types: list[str] | None = None, op_names: list[str] | None = None,
          dummy_input: Any = None, evaluator: Any = None, speedup: bool = False, progress: bool | None = None,
          compress_args: Mapping[str, Any] | None = None, **pruner_args: Any) -> tuple[nn.Module, PruneReport]:
    """Prune ``model`` with one registered pruner and report what it cost.

    Args:
        model: the model (changed in place: masks attached, or shrunk with ``speedup``).
        pruner: a registry name (``secateurs list``) or class name.
        config_list: the config list; or give ``sparse_ratio`` (with ``op_types`` /
            ``op_names``, default the pruner's default op types) for a one-entry list.
        dummy_input: example inputs: pruning whole channel groups, the MACs count and the
            speedup need it.
        evaluator: for pruners that train or score (an Evaluator, or for the search
            pruners also a plain ``model -> float``).
        speedup: shrink the model with :class:`ModelSpeedup` (the masks are detached); else
            the masks stay attached and the report's "after" numbers are those the speedup
            would give (measured on a copy).
        compress_args: keyword arguments of ``compress()`` (``max_steps`` of a movement or
            scheduled pruner).
        **pruner_args: the pruner's own arguments (``training_steps=...``).

    Returns:
        ``(model, report)``: the pruned model (the same object) and a :class:`PruneReport`.

    Example:
        >>> import torch, torch.nn as nn, secateurs
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
        >>> net, report = secateurs.prune(net, "l1norm", sparse_ratio=0.5, op_names=["0"],
        ...                               dummy_input=torch.randn(1, 3, 8, 8), speedup=True)
        >>> net[0].out_channels, report.layers[0].params_after
        (4, 112)
    """
    from .analysis import count_flops_params
    from .masks import detach_masks, get_masks
    from .report import sparsity_report
    from .speedup import ModelSpeedup

    if not isinstance(model, nn.Module):
        raise TypeError(f"secateurs.prune: model must be a torch.nn.Module; got {type(model).__name__}.")
    if (config_list is None) == (sparse_ratio is None):
        raise ValueError("secateurs.prune: give either config_list or sparse_ratio (with op_types / op_names).")
    if config_list is None:
        entry: dict[str, Any] = {"sparse_ratio": sparse_ratio}
        if op_names:
            entry["op_names"] = list(op_names)
        if op_types or not op_names:
            entry["op_types"] = list(op_types or ["default"])
        config_list = [entry]
    elif op_types is not None or op_names is not None:
        raise ValueError("secateurs.prune: op_types / op_names go with sparse_ratio; put them in config_list's entries.")
    if speedup and dummy_input is None:
        raise ValueError("secateurs.prune: speedup=True needs dummy_input (the speedup traces the model).")
    given = copy.deepcopy(config_list)
    counted = dummy_input is not None
    before = count_flops_params(model, dummy_input) if counted else None
    params_before = sum(p.numel() for p in model.parameters())
    per_before = _per_layer(before[2]) if before else {}

    instance = build_pruner(model, pruner, config_list, dummy_input=dummy_input, evaluator=evaluator,
                            progress=progress, pruner_args=pruner_args)
    instance.compress(**dict(compress_args or {}))
    inner = getattr(instance, "pruner", instance)
    net = getattr(inner, "net", model)
    masks = {name: {t: m.clone() for t, m in targets.items()} for name, targets in get_masks(net).items()}
    if not masks:
        raise RuntimeError(f"secateurs.prune: {type(instance).__name__} attached no masks (nothing was pruned).")
    settings = getattr(inner, "settings", None)
    sparse = sparsity_report(net, masks, settings)
    nonzero = params_before - sparse.pruned

    sped, notes = net, []
    abs_diff = rel_diff = math.nan
    if counted:
        sped = net if speedup else copy.deepcopy(net)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # what the speedup keeps is in the report's notes
            engine = ModelSpeedup(sped, dummy_input)
            engine.speedup_model()
        notes = engine.report.kept + engine.report.not_shrunk
        if speedup:
            abs_diff, rel_diff = engine.report.max_abs_diff, engine.report.max_rel_diff
        after = count_flops_params(sped, dummy_input)
        per_after = _per_layer(after[2])
        params_after = after[1]
    else:
        per_after, params_after = {}, params_before
    if speedup and get_masks(net):
        detach_masks(net)

    weight_sparsity = {row.module_name: row.sparsity for row in sparse.rows if row.target == "weight"}
    config_of = {row.module_name: row.config_index for row in sparse.rows if row.config_index is not None}
    names = list(per_before) or list(dict.fromkeys(row.module_name for row in sparse.rows))
    names += [n for n in dict.fromkeys(row.module_name for row in sparse.rows) if n not in names]
    modules = dict(net.named_modules())
    layers = []
    for name in names:
        b, a = per_before.get(name), per_after.get(name)
        module = modules.get(name)
        own = sum(p.numel() for p in module.parameters()) if module is not None else 0
        index = config_of.get(name)
        layers.append(LayerReport(
            name=name, type=b["type"] if b else type(module).__name__, config_index=index,
            config=copy.deepcopy(given[index]) if index is not None and index < len(given) else None,
            sparsity=weight_sparsity.get(name, 0.0), params_before=b["params"] if b else own,
            params_after=a["params"] if a else (0 if counted and b else own),
            macs_before=b["flops"] if b else 0, macs_after=a["flops"] if a else 0))
    report = PruneReport(
        pruner=instance.registry_name if hasattr(instance, "registry_name") else pruner, config_list=given,
        layers=layers, params_before=params_before, params_after=params_after, nonzero_params=nonzero,
        macs_before=before[0] if before else None, macs_after=after[0] if counted else None, sped_up=speedup,
        max_abs_diff=abs_diff, max_rel_diff=rel_diff, speedup_notes=notes, masks=masks)
    return (sped if speedup else model), report


__all__ = ["LayerReport", "PruneReport", "build_pruner", "prune", "required_arguments"]
