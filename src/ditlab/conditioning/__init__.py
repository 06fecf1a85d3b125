"""ditlab.conditioning: conditions as data (class labels, text, nothing) — see ``base.Condition``.

    condition = condition_for_dataset(dataset)          # from the dataset's metadata
    records = condition.records(dataset.metas())        # once, stored with the latents
    cond = condition.drop(condition.batch(records_of_batch), mask)   # training
    out = model(x, t, **cond)
"""
from __future__ import annotations

from typing import Any

from ditlab.conditioning.base import (
    Cond,
    Condition,
    Records,
    cat_conds,
    cond_rows,
    cond_to,
    index_records,
)
from ditlab.conditioning.classes import ClassCondition, NoCondition
from ditlab.errors import ConfigError

CONDITION_KINDS = ("auto", "class", "text", "none")


def condition_from_dict(d: dict[str, Any] | None, **context: Any) -> Condition:
    """Rebuild a condition from ``Condition.to_dict()`` (``None``: no condition).

    ``context`` passes what a stored description cannot hold (e.g. ``root``: the folder of a text
    condition's cached features).
    """
    if not d or d.get("kind") == "none":
        return NoCondition()
    kind = d.get("kind")
    if kind == "class":
        return ClassCondition(int(d["num_classes"]), d.get("class_names"))
    if kind == "text":
        if "table" not in d:  # a converted model folder: prompts go through the encoder, no caption table
            from ditlab.conditioning.encoded_text import EncodedTextCondition

            return EncodedTextCondition.from_dict(d, **context)
        from ditlab.conditioning.text import TextCondition

        return TextCondition.from_dict(d, **context)
    raise ConfigError(f"unknown condition kind {kind!r}: this ditlab knows {', '.join(CONDITION_KINDS[1:])}")


def condition_for_dataset(dataset, kind: str = "auto", *, text_encoder: str = "minilm",
                          text_max_length: int | None = None, text_null: str = "empty",
                          text_standardize: bool = False, root=None, device="cpu", log=None) -> Condition:
    """The condition a dataset supports: ``auto`` picks text for captioned data (``dataset.captioned``),
    else class labels when it has classes, else none.

    Text conditions encode every distinct caption once with ``text_encoder`` (``minilm`` or a folder;
    ``text_max_length`` tokens) into a feature table under ``root`` (a run's or cache's ``condition/``),
    reused when it is already there; ``text_null`` is ``empty`` or ``learned``; ``text_standardize``
    standardises each feature dimension by its statistics over the dataset's captions.
    """
    if kind not in CONDITION_KINDS:
        raise ConfigError(f"unknown condition {kind!r}: choose one of {', '.join(CONDITION_KINDS)}")
    num_classes = int(getattr(dataset, "num_classes", 0))
    captioned = bool(getattr(dataset, "captioned", False))
    if kind == "none":
        return NoCondition()
    if kind == "text" or (kind == "auto" and captioned):
        if not captioned:
            raise ConfigError("--condition text needs a captioned dataset (metadata.jsonl or NAME.txt captions, "
                              "or mnist-captions): see docs/text_to_image.md")
        if root is None:
            raise ConfigError("a text condition needs a folder for its caption features (root=...)")
        from ditlab.conditioning.text import TextCondition

        captions = [c for m in dataset.metas() for c in (m.get("caption") or [""])]
        return TextCondition.build(captions, text_encoder, root=root, max_length=text_max_length, null=text_null,
                                   examples=getattr(dataset, "example_prompts", None), standardize=text_standardize,
                                   device=device, log=log)
    if num_classes > 0:
        return ClassCondition(num_classes, getattr(dataset, "class_names", None))
    if kind == "class":
        raise ConfigError("--condition class needs a dataset with classes (one subfolder per class): "
                          "use --condition none for a flat folder")
    return NoCondition()


__all__ = [
    "CONDITION_KINDS",
    "ClassCondition",
    "Cond",
    "Condition",
    "NoCondition",
    "Records",
    "cat_conds",
    "cond_rows",
    "cond_to",
    "condition_for_dataset",
    "condition_from_dict",
    "index_records",
]
