"""Prompts encoded on demand, with no caption table: the text condition of a converted model folder.

A run trained by ditlab looks its captions up in a feature table (``TextCondition``). A folder written by
``ditlab convert diffusers`` (SD3, PixArt) has no table and no captions: every prompt goes through the text
encoder given with ``--text_encoder`` (a local T5 / CLIP / BERT folder), which must give the widths the
network was built for. The folder's ``pipeline.json`` describes the condition::

    {"kind": "text", "encoder": "t5-v1_1-xxl", "context_dim": 4096, "pooled_dim": 0, "max_length": 120,
     "null": "empty", "attend_padding": false}

- ``null``: ``"empty"`` (the unconditional branch of guidance is the empty prompt's encoding, as the
  diffusers pipelines do) or ``"learned"`` (rows without tokens; the network's learned null token);
- ``attend_padding``: every token position is marked real, padding included (SD3 attends to its padded
  T5 and CLIP sequences without a mask; PixArt masks them).

Features are used as the encoder gives them (no standardisation: the published networks were trained on raw
encoder outputs). Training from such a condition is refused: it has no records.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ditlab.conditioning.base import Cond, Condition, Records
from ditlab.errors import ConfigError, UserError
from ditlab.files import atomic_write_json

NULL_KINDS = ("empty", "learned")


class EncodedTextCondition(Condition):
    """``context`` (N, L, context_dim), ``context_mask`` (N, L) bool and ``pooled`` (N, pooled_dim) of prompts,
    encoded when asked (see the module doc).

    Args:
        encoder: the encoder spec named by the folder (informative when ``text_encoder`` is given).
        max_length: token positions L (at most the encoder's learned positions).
        context_dim, pooled_dim: the widths the network takes (pooled_dim 0: the network reads no pooled vector).
        null: ``"empty"`` or ``"learned"``.
        attend_padding: mark every position as a real token.
        text_encoder: a loaded encoder, or a folder / ``minilm`` to load on first use instead of ``encoder``.
    """

    kind = "text"
    keys = ("context", "context_mask", "pooled")

    def __init__(self, encoder: str, max_length: int, context_dim: int, pooled_dim: int, *, null: str = "empty",
                 attend_padding: bool = False, device: torch.device | str = "cpu", text_encoder: Any = None,
                 examples: Sequence[str] | None = None):
        if null not in NULL_KINDS:
            raise ConfigError(f"unknown text null {null!r}: choose one of {', '.join(NULL_KINDS)}")
        self.encoder_spec = str(text_encoder) if isinstance(text_encoder, str | Path) else encoder
        self.explicit = text_encoder is not None
        self._encoder = None if text_encoder is None or isinstance(text_encoder, str | Path) else text_encoder
        self.max_length, self.context_dim, self.pooled_dim = int(max_length), int(context_dim), int(pooled_dim)
        self.null_kind = null
        self.attend_padding = bool(attend_padding)
        self.device = torch.device(device)
        self.examples = [str(e) for e in examples] if examples else []
        self._cache: dict[str, Cond] = {}  # prompt -> its row
        self._names: dict[bytes, str] = {}  # context row -> prompt (for describe)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, device: torch.device | str = "cpu", text_encoder: Any = None,
                  text_null: str | None = None, **_: Any) -> EncodedTextCondition:
        """Inverse of ``to_dict``; ``text_encoder`` (``--text_encoder``) replaces the named encoder. The encoder
        is loaded and checked here, so a missing or mismatched one is refused before any work starts."""
        cond = cls(str(d.get("encoder", "")), int(d["max_length"]), int(d["context_dim"]), int(d.get("pooled_dim", 0)),
                   null=text_null or str(d.get("null", "empty")), attend_padding=bool(d.get("attend_padding", False)),
                   device=device, text_encoder=text_encoder, examples=d.get("examples"))
        cond.encoder  # noqa: B018  (loads and checks)
        return cond

    # ------------------------------------------------------------------ data side: none
    def records(self, metas: Sequence[Mapping[str, Any]]) -> Records:
        raise ConfigError("a converted model folder has no caption table to train from: train with ditlab "
                          "(`ditlab train --data FOLDER`), or fine-tune from a run directory")

    def batch(self, records: Records, choice: Tensor | None = None) -> Cond:
        return self.records([])  # raises

    # ------------------------------------------------------------------ the encoder
    @property
    def encoder(self):
        """The text encoder, loaded on first use; a one-line UserError when none is given or its widths are
        not the network's."""
        if self._encoder is None:
            from ditlab.text import load_text_encoder

            if not self.explicit:
                raise UserError(f"this model reads the prompts of a {self.encoder_spec or 'text'} encoder that "
                                f"ditlab does not ship: pass --text_encoder FOLDER (a local encoder giving "
                                f"{self.context_dim}-wide token features)")
            self._encoder = load_text_encoder(self.encoder_spec, max_length=self._length_for(self.encoder_spec),
                                              device=self.device)
            self.max_length = self._encoder.max_length
        enc = self._encoder
        if enc.dim != self.context_dim or (self.pooled_dim and enc.pooled_dim != self.pooled_dim):
            raise UserError(f"text encoder {self.encoder_spec} gives {enc.dim}-wide tokens and a {enc.pooled_dim}-wide "
                            f"pooled vector; this model takes {self.context_dim} and {self.pooled_dim or 'none'}: "
                            "pass the encoder it was trained with")
        return enc

    def _length_for(self, spec: str) -> int:
        """``max_length`` capped at the encoder's learned positions (e.g. a CLIP of fewer than 77)."""
        from ditlab.text.encoder import _position_limit, _read_config

        path = Path(spec).expanduser()
        if not (path / "config.json").is_file():
            return self.max_length
        config = _read_config(path)
        limit = _position_limit(config.get("text_config", config) if config.get("model_type") == "clip" else config)
        return self.max_length if limit is None else min(self.max_length, limit)

    def _encode(self, prompts: list[str]) -> None:
        """Encode the prompts not yet cached, one row each (float32, on the CPU)."""
        new = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        if not new:
            return
        out = self.encoder.encode(new)
        pooled = out["pooled"].float().cpu()
        if not self.pooled_dim:  # the network reads none: a zero-wide vector keeps batches uniform
            pooled = pooled[:, :0]
        for i, p in enumerate(new):
            mask = out["context_mask"][i : i + 1].cpu()
            row = {"context": out["context"][i : i + 1].float().cpu(),
                   "context_mask": torch.ones_like(mask) if self.attend_padding else mask,
                   "pooled": pooled[i : i + 1]}
            self._cache[p] = row
            self._names.setdefault(row["context"].numpy().tobytes(), p)

    # ------------------------------------------------------------------ user side
    def null(self, n: int, device: torch.device | str = "cpu") -> Cond:
        if self.null_kind == "learned":  # no token: the network uses its learned null token
            return {"context": torch.zeros(n, self.max_length, self.context_dim, device=device),
                    "context_mask": torch.zeros(n, self.max_length, dtype=torch.bool, device=device),
                    "pooled": torch.zeros(n, self.pooled_dim, device=device)}
        self._encode([""])
        return {k: v.expand(n, *v.shape[1:]).to(device) for k, v in self._cache[""].items()}

    def prompts(self, prompts: Sequence[str]) -> Cond:
        """The condition of ``prompts`` (N rows), each encoded once; an empty prompt is the null condition."""
        if isinstance(prompts, str):
            raise TypeError("prompts takes a list of prompts, not one string")
        prompts = [str(p).strip() for p in prompts]
        self._encode([p for p in prompts if p])
        rows = [self._cache[p] if p else self.null(1) for p in prompts]
        if not rows:
            return {k: v[:0] for k, v in self.null(1).items()}
        return {k: torch.cat([r[k] for r in rows]) for k in self.keys}

    def example_prompts(self, k: int) -> list[str]:
        examples = self.examples or ["a photograph of an astronaut riding a horse"]
        return [examples[i % len(examples)] for i in range(k)]

    def describe(self, cond: Cond) -> list[str]:
        """The prompt of each row when ``prompts`` made it, ``(null)`` for the null condition, else ``(prompt)``."""
        context = cond["context"].float().cpu()
        empty = ~cond["context_mask"].bool().any(dim=1)
        out = []
        for i in range(context.shape[0]):
            name = self._names.get(context[i : i + 1].numpy().tobytes())
            out.append("(null)" if bool(empty[i]) or name == "" else (name if name is not None else "(prompt)"))
        return out

    # ------------------------------------------------------------------ the network and persistence
    def model_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"num_classes": 0, "context_dim": self.context_dim, "pooled_dim": self.pooled_dim}
        if self.null_kind == "learned":
            fields["learned_null"] = True
        return fields

    def save(self, folder: Path) -> None:
        atomic_write_json(Path(folder) / "text_condition.json", self.to_dict(), sort_keys=True)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "encoder": self.encoder_spec, "max_length": self.max_length,
                "context_dim": self.context_dim, "pooled_dim": self.pooled_dim, "null": self.null_kind,
                "attend_padding": self.attend_padding, "examples": list(self.examples)}
