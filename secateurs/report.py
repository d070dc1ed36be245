"""The sparsity report: per masked tensor, its realised sparsity and the config it came from."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from .config import ModuleSetting
from .targets import get_module, module_type_name


@dataclass(frozen=True)
class ReportRow:
    module_name: str
    module_type: str
    target: str
    shape: tuple[int, ...]
    numel: int
    pruned: int
    config_index: int | None
    note: str | None = None

    @property
    def sparsity(self) -> float:
        return self.pruned / self.numel if self.numel else 0.0


@dataclass(frozen=True)
class SparsityReport:
    """Rows per masked tensor plus totals.

    Attributes:
        rows: one per (module, target) mask, and one per selected tensor that stays
            unpruned, with a ``note`` saying why.
        model_params: parameters in the whole model.
    """

    rows: tuple[ReportRow, ...]
    model_params: int

    @property
    def masked_numel(self) -> int:
        return sum(r.numel for r in self.rows)

    @property
    def pruned(self) -> int:
        return sum(r.pruned for r in self.rows)

    @property
    def sparsity(self) -> float:
        """Pruned fraction of the masked tensors."""
        return self.pruned / self.masked_numel if self.masked_numel else 0.0

    @property
    def model_sparsity(self) -> float:
        """Pruned fraction of all the model's parameters."""
        return self.pruned / self.model_params if self.model_params else 0.0

    def to_dict(self) -> dict:
        return {
            "rows": [asdict(r) | {"sparsity": r.sparsity} for r in self.rows],
            "masked_numel": self.masked_numel,
            "pruned": self.pruned,
            "sparsity": self.sparsity,
            "model_params": self.model_params,
            "model_sparsity": self.model_sparsity,
        }

    def __str__(self) -> str:
        noted = any(r.note for r in self.rows)
        header = ("module", "type", "target", "shape", "sparsity", "config") + (("note",) if noted else ())
        lines = [
            (
                r.module_name,
                r.module_type,
                r.target,
                "x".join(map(str, r.shape)),
                f"{r.sparsity:.2%}",
                "-" if r.config_index is None else f"[{r.config_index}]",
            ) + ((r.note or "",) if noted else ())
            for r in self.rows
        ]
        widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)]
        fmt = "  ".join(f"{{:{'>' if i == 4 else '<'}{w}}}" for i, w in enumerate(widths))
        out = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
        out += [fmt.format(*line) for line in lines]
        out.append(
            f"masked tensors: {self.pruned:,} of {self.masked_numel:,} pruned ({self.sparsity:.2%}); "
            f"whole model: {self.model_sparsity:.2%} of {self.model_params:,} parameters"
        )
        return "\n".join(out)


def sparsity_report(
    model: nn.Module,
    masks: Mapping[str, Mapping[str, torch.Tensor]],
    settings: Mapping[str, ModuleSetting] | None = None,
    notes: Mapping[tuple[str, str], str] | None = None,
) -> SparsityReport:
    """Build a :class:`SparsityReport` for ``masks`` on ``model``.

    Args:
        settings: the pruner's resolved settings; when given, each row names its config.
        notes: (module name, target name) -> why that selected tensor is (partly) not
            pruned; a tensor without a mask gets a row of its own, with nothing pruned.
    """
    rows = []
    notes = dict(notes or {})
    masks = {name: dict(targets) for name, targets in masks.items()}
    for module_name, target in notes:
        if target not in masks.get(module_name, {}):
            tensor = getattr(get_module(model, module_name), target)
            masks.setdefault(module_name, {})[target] = torch.ones(tensor.shape, dtype=torch.bool)
    for module_name, targets in masks.items():
        module = get_module(model, module_name)
        setting = (settings or {}).get(module_name)
        for target, mask in targets.items():
            rows.append(
                ReportRow(
                    module_name=module_name,
                    module_type=module_type_name(module),
                    target=target,
                    shape=tuple(mask.shape),
                    numel=mask.numel(),
                    pruned=int(mask.numel() - torch.count_nonzero(mask)),
                    config_index=None if setting is None else setting.config_index,
                    note=notes.get((module_name, target)),
                )
            )
    params = sum(p.numel() for p in model.parameters())
    return SparsityReport(tuple(rows), params)
