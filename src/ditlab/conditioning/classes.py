"""Class labels (the DiT paper's condition) and no condition at all."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ditlab.conditioning.base import Cond, Condition, Records
from ditlab.errors import UserError


class ClassCondition(Condition):
    """``y`` (N,) long labels in [0, num_classes); the null label is ``num_classes`` (the extra row of the
    network's label table). Items carry ``meta["label"]``.

    Args:
        num_classes: number of real classes (> 0).
        class_names: one name per class (an image folder's subfolder names, MNIST's digits); numbers if empty.
    """

    kind = "class"
    keys = ("y",)

    def __init__(self, num_classes: int, class_names: Sequence[str] | None = None):
        if num_classes < 1:
            raise ValueError(f"a class condition needs >= 1 class, got {num_classes}")
        names = [str(n) for n in (class_names or [])]
        if names and len(names) != num_classes:
            raise ValueError(f"{len(names)} class names for {num_classes} classes")
        self.num_classes = int(num_classes)
        self.class_names = names or [str(i) for i in range(num_classes)]

    @property
    def null_label(self) -> int:
        return self.num_classes

    def records(self, metas: Sequence[Mapping[str, Any]]) -> Records:
        labels = [int(m["label"]) for m in metas]
        return {"y": torch.tensor(labels, dtype=torch.long).reshape(len(labels))}

    def batch(self, records: Records, choice: Tensor | None = None) -> Cond:
        return {"y": records["y"]}

    def null(self, n: int, device: torch.device | str = "cpu") -> Cond:
        return {"y": torch.full((n,), self.null_label, dtype=torch.long, device=device)}

    def labels(self, labels: Sequence[int] | Tensor) -> Cond:
        """The condition of explicit labels, each checked against the classes."""
        y = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
        bad = y[(y < 0) | (y >= self.num_classes)]
        if bad.numel():
            raise UserError(f"class {int(bad[0])} is outside the model's classes 0..{self.num_classes - 1}: "
                            "pick one of those")
        return {"y": y}

    def parse(self, text: str) -> list[int]:
        """``'all'``, ``'3'``, ``'1,2,7'`` or class names (``'circles,squares'``) -> labels."""
        if text.strip().lower() == "all":
            return list(range(self.num_classes))
        by_name = {name: i for i, name in enumerate(self.class_names)}
        labels = []
        for part in (p.strip() for p in text.split(",")):
            if part in by_name:
                labels.append(by_name[part])
                continue
            try:
                label = int(part)
            except ValueError:
                shown = ", ".join(self.class_names[:6]) + (" ..." if self.num_classes > 6 else "")
                raise UserError(f"--class '{part}' is neither a class number nor a class name of this model "
                                f"({shown}): give labels like 3 or 1,2,7, names, or all") from None
            if not 0 <= label < self.num_classes:
                raise UserError(f"--class {label} is outside the model's classes 0..{self.num_classes - 1}: "
                                "pick one of those")
            labels.append(label)
        return labels

    def describe(self, cond: Cond) -> list[str]:
        return [self.class_names[int(y)] if int(y) < self.num_classes else "(null)" for y in cond["y"]]

    def model_fields(self) -> dict[str, Any]:
        return {"num_classes": self.num_classes}

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "num_classes": self.num_classes, "class_names": list(self.class_names)}


class NoCondition(Condition):
    """Unconditional models: no keyword tensors at all."""

    kind = "none"
    keys = ()

    def records(self, metas: Sequence[Mapping[str, Any]]) -> Records:
        return {}

    def batch(self, records: Records, choice: Tensor | None = None) -> Cond:
        return {}

    def null(self, n: int, device: torch.device | str = "cpu") -> Cond:
        return {}

    def describe(self, cond: Cond) -> list[str]:
        return []

    def model_fields(self) -> dict[str, Any]:
        return {"num_classes": 0}

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind}
