"""Text prompts as a condition: caption ids in, encoder features out (``TextCondition``).

Records are row numbers into a caption feature table (``ditlab.text.caption_features``): each distinct
caption of the dataset is encoded once, stored on disk, and looked up per batch, as PixArt precomputes
its T5 features. An item may have several captions ((N, K) ids, padded with -1); ``batch`` picks one per
row with the global batch's ``choice`` draw, so which caption trains at a step does not depend on the
number of processes.

    condition = TextCondition.build(all_captions, "minilm", root=run_dir / "condition")
    records = condition.records(dataset.metas())           # {"caption_ids": (N, K) long}
    cond = condition.batch(records_of_batch, choice)       # {"context", "context_mask", "pooled"}
    cond = condition.prompts(["a thick 7 leaning left"])   # sampling: through the encoder (cached)

The null condition (guidance, caption dropout) is chosen by ``null``:

- ``"empty"``: the encoding of the empty prompt (row 0 of every table), so an empty ``--prompt`` and
  the unconditional branch of guidance are the same thing;
- ``"learned"``: context zero with no valid token and pooled zero; the network replaces a row without
  tokens by a learned null token (``DiTConfig.learned_null``), PixArt's learned ``y_embedding``.

docs/text_to_image.md measures the two.

With ``standardize`` (off by default), every feature dimension is shifted and scaled by its mean and standard
deviation over the dataset's captions (real tokens for ``context``), measured once when the features are
encoded and stored beside them: the role the latent ``scaling_factor`` plays for images. Captions of one
dataset share most of their encoding (MiniLM's pooled vectors of two digit captions have a cosine near 0.9),
so this looked promising; on the text demo it was worse at equal steps (docs/text_to_image.md), so the
encoder's features go to the network as they are unless asked.
"""
from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ditlab.conditioning.base import Cond, Condition, Records
from ditlab.errors import ConfigError, UserError
from ditlab.files import atomic_write, atomic_write_json

NULL_KINDS = ("empty", "learned")
CONDITION_FILE = "text_condition.json"
STATS_FILE = "text_stats.safetensors"
STD_FLOOR = 1e-4  # a dimension that never changes is not blown up


@torch.no_grad()
def feature_stats(table, ids: Sequence[int], chunk: int = 2048) -> dict[str, Tensor]:
    """Per-dimension mean and standard deviation of the rows ``ids`` of a caption feature table:
    ``context_mean``/``context_std`` (D,) over their real tokens, ``pooled_mean``/``pooled_std`` (P,)."""
    ids = list(ids)
    sums = {"context": torch.zeros(table.dim, dtype=torch.float64), "pooled": torch.zeros(table.pooled_dim,
                                                                                      dtype=torch.float64)}
    squares = {k: torch.zeros_like(v) for k, v in sums.items()}
    counts = {"context": 0, "pooled": 0}
    for start in range(0, len(ids), chunk):
        rows = table.lookup(ids[start : start + chunk])
        tokens = rows["context"][rows["context_mask"]].double()  # (tokens, D)
        for key, x in (("context", tokens), ("pooled", rows["pooled"].double())):
            sums[key] += x.sum(0)
            squares[key] += x.square().sum(0)
            counts[key] += x.shape[0]
    out = {}
    for key in sums:
        n = max(counts[key], 1)
        mean = sums[key] / n
        var = (squares[key] / n - mean.square()).clamp(min=0)
        out[f"{key}_mean"] = mean.float()
        out[f"{key}_std"] = var.sqrt().clamp(min=STD_FLOOR).float()
    return out


def _encoder_spec(spec: str) -> str:
    """``minilm`` as is; a folder as an absolute path (the run may be used from another directory)."""
    from ditlab.text import BUILTIN_TEXT_ENCODERS

    if spec in BUILTIN_TEXT_ENCODERS:
        return spec
    path = Path(spec).expanduser()
    return str(path.absolute()) if path.exists() else spec


def _link_or_copy(src: Path, dst: Path) -> None:
    """Put ``src`` at ``dst`` (a hard link when the file system allows, else a copy), atomically."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


class TextCondition(Condition):
    """Prompts encoded by a frozen text encoder: ``context`` (N, L, D), ``context_mask`` (N, L) bool, ``pooled``.

    Args:
        table: the caption feature table (``ditlab.text.CaptionFeatures``) of the dataset's captions.
        encoder: the encoder spec (``"minilm"`` or a folder) that made the table; loaded on the first
            prompt the table does not hold.
        max_length: token positions L (the encoder's ``max_length``).
        null: ``"empty"`` or ``"learned"`` (see the module doc).
        examples: prompts shown by in-training sample grids (default: spread over the table).
        device: where ``prompts`` encodes.
        text_encoder: an already loaded encoder (or another spec) to use instead of ``encoder``.
    """

    kind = "text"
    keys = ("context", "context_mask", "pooled")

    def __init__(self, table, encoder: str, max_length: int, *, null: str = "empty",
                 examples: Sequence[str] | None = None, device: torch.device | str = "cpu",
                 text_encoder: Any = None, stats: Mapping[str, Tensor] | None = None):
        if null not in NULL_KINDS:
            raise ConfigError(f"unknown text null {null!r}: choose one of {', '.join(NULL_KINDS)}")
        self.table = table
        self.encoder_spec = encoder
        self.max_length = int(max_length)
        self.null_kind = null
        self.examples = [str(e) for e in examples] if examples else []
        self.device = torch.device(device)
        self._encoder = text_encoder if text_encoder is not None and not isinstance(text_encoder, str) else None
        if isinstance(text_encoder, str):
            self.encoder_spec = _encoder_spec(text_encoder)
        self.stats = {k: v.float().cpu() for k, v in stats.items()} if stats else None  # standardisation
        self._cache: dict[str, dict[str, Tensor]] = {}  # prompts encoded at sampling time, one row each
        self._names: dict[bytes, str] = {}  # pooled vector -> the prompt it came from (for describe)
        if null == "empty":
            self._names[self.null(1)["pooled"][0].numpy().tobytes()] = ""

    # ------------------------------------------------------------------ building
    @classmethod
    def build(cls, captions: Sequence[str], encoder: str = "minilm", *, root: str | os.PathLike,
              max_length: int | None = None, null: str = "empty", examples: Sequence[str] | None = None,
              standardize: bool = False, device: torch.device | str = "cpu", log=None) -> TextCondition:
        """Encode every distinct caption not yet in ``root``'s table for this encoder (once) and return the
        condition (with ``standardize``, the features' statistics over these captions). ``log`` (a print-like
        function) hears what is encoded."""
        from ditlab.text import caption_features, load_text_encoder

        if null not in NULL_KINDS:
            raise ConfigError(f"unknown text null {null!r}: choose one of {', '.join(NULL_KINDS)}")
        enc = load_text_encoder(encoder, max_length=max_length, device=device)
        distinct = list(dict.fromkeys(str(c) for c in captions))
        if log is not None:
            log(f"text features: {len(distinct)} distinct captions, encoder {encoder} "
                f"(max {enc.max_length} tokens) -> {root}")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            table = caption_features(root, distinct, enc)
        for w in caught:  # the truncation warning, once, named for the captions it is about
            warnings.warn(f"captions: {w.message}", stacklevel=2)
        stats = feature_stats(table, table.ids(distinct).tolist()) if standardize else None
        return cls(table, _encoder_spec(encoder), enc.max_length, null=null, examples=examples, device=device,
                   text_encoder=enc, stats=stats)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, root: str | os.PathLike | None = None,
                  device: torch.device | str = "cpu", text_encoder: Any = None, text_null: str | None = None,
                  **_: Any) -> TextCondition:
        """Inverse of ``to_dict``: ``root`` is the folder ``save`` wrote (a run's or a cache's ``condition/``);
        ``text_encoder`` replaces the stored encoder spec (it must make the same features), ``text_null``
        the stored null kind (training from a latent cache)."""
        from ditlab.text import open_caption_features

        if root is None:
            raise ConfigError("a text condition needs the folder of its caption features (root=...)")
        path = Path(root) / str(d["table"])
        if not path.is_file():
            raise UserError(f"caption features {path} are missing: the run or cache is incomplete; "
                            "rerun the training command (it re-encodes them) or copy the folder whole")
        table = open_caption_features(path, d.get("identity"))
        stats = None
        if d.get("stats"):
            from safetensors.torch import load_file

            stats_path = Path(root) / str(d["stats"])
            if not stats_path.is_file():
                raise UserError(f"caption feature statistics {stats_path} are missing: the run or cache is "
                                "incomplete; copy the folder whole")
            stats = load_file(str(stats_path))
        return cls(table, str(d["encoder"]), int(d["max_length"]), null=text_null or str(d.get("null", "empty")),
                   examples=d.get("examples"), device=device, text_encoder=text_encoder, stats=stats)

    # ------------------------------------------------------------------ data side
    def records(self, metas: Sequence[Mapping[str, Any]]) -> Records:
        """``{"caption_ids": (N, K) long}``: each item's captions as table rows, padded with -1.

        An item without a caption (no ``caption`` key, or an empty list) trains with the empty caption.
        """
        lists = []
        for m in metas:
            caps = m.get("caption")
            caps = [caps] if isinstance(caps, str) else list(caps or [""])
            lists.append(self.table.ids(caps).tolist())
        k = max((len(ids) for ids in lists), default=1)
        out = torch.full((len(lists), k), -1, dtype=torch.long)
        for i, ids in enumerate(lists):
            out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return {"caption_ids": out}

    def pick(self, records: Records, choice: Tensor | None = None) -> Tensor:
        """The table row (N,) of one caption per item: ``floor(choice * captions of the item)``."""
        ids = records["caption_ids"]  # (N, K), -1 = no caption there
        count = (ids >= 0).sum(dim=1).clamp(min=1)  # (N,)
        if choice is None:
            col = torch.zeros_like(count)
        else:
            col = torch.minimum((choice.to(ids.device).float() * count).long(), count - 1)
        picked = ids.gather(1, col[:, None])[:, 0]  # (N,)
        return picked.clamp(min=0)  # a row without captions: row 0, the empty caption

    def standardized(self, features: Cond) -> Cond:
        """Encoder features -> what the network sees: each dimension standardised by the dataset's statistics
        (real tokens only; padding stays zero), or unchanged without statistics."""
        if self.stats is None:
            return features
        dev = features["pooled"].device
        st = {k: v.to(dev) for k, v in self.stats.items()}
        mask = features["context_mask"]
        context = (features["context"] - st["context_mean"]) / st["context_std"] * mask[..., None]  # (N, L, D)
        pooled = (features["pooled"] - st["pooled_mean"]) / st["pooled_std"]  # (N, P)
        return {"context": context, "context_mask": mask, "pooled": pooled}

    def batch(self, records: Records, choice: Tensor | None = None) -> Cond:
        ids = self.pick(records, choice)
        return self.standardized(self.table.lookup(ids, device=ids.device))

    def null(self, n: int, device: torch.device | str = "cpu") -> Cond:
        if self.null_kind == "learned":  # no token: the network uses its learned null token
            return {
                "context": torch.zeros(n, self.max_length, self.table.dim, device=device),
                "context_mask": torch.zeros(n, self.max_length, dtype=torch.bool, device=device),
                "pooled": torch.zeros(n, self.table.pooled_dim, device=device),
            }
        return self.standardized(self.table.lookup(torch.zeros(n, dtype=torch.long), device=device))  # row 0: ""

    # ------------------------------------------------------------------ user side
    @property
    def encoder(self):
        """The text encoder, loaded on first use (sampling prompts the table does not hold)."""
        if self._encoder is None:
            from ditlab.text import load_text_encoder

            self._encoder = load_text_encoder(self.encoder_spec, max_length=self.max_length, device=self.device)
            if self._encoder.identity() != self.table.identity:
                raise UserError(
                    f"text encoder {self.encoder_spec} is not the one this model was trained with "
                    f"({self.table.identity}): pass --text_encoder with the training encoder"
                )
        return self._encoder

    def prompts(self, prompts: Sequence[str]) -> Cond:
        """The condition of ``prompts`` (N rows): table rows where the table holds a prompt, else encoded once
        and kept in memory. An empty prompt is the null condition (samples unconditionally)."""
        if isinstance(prompts, str):
            raise TypeError("prompts takes a list of prompts, not one string")
        prompts = [str(p).strip() for p in prompts]
        new = [p for p in dict.fromkeys(prompts) if p and p not in self.table and p not in self._cache]
        if new:
            enc = self.encoder.encode(new)  # one truncation warning for the call, if any
            # stored like the table (float16 context), so a prompt gives the same features whether or
            # not it was a training caption
            context = enc["context"].cpu().to(self.table.storage_dtype).float()
            for i, p in enumerate(new):
                self._cache[p] = {"context": context[i : i + 1], "context_mask": enc["context_mask"][i : i + 1].cpu(),
                                  "pooled": enc["pooled"][i : i + 1].float().cpu()}
        rows = []
        null = self.null(1)
        for p in prompts:
            if not p:
                rows.append(null)
                continue
            row = self.standardized(self._cache.get(p) or self.table.lookup(self.table.ids([p])))
            self._names.setdefault(row["pooled"][0].numpy().tobytes(), p)
            rows.append(row)
        if not rows:
            return {k: v[:0] for k, v in null.items()}
        return {k: torch.cat([r[k] for r in rows]) for k in self.keys}

    def example_prompts(self, k: int) -> list[str]:
        """``k`` prompts for in-training grids: the dataset's examples, else captions spread over the table."""
        if self.examples:
            return [self.examples[i % len(self.examples)] for i in range(k)]
        captions = [c for c in self.table.captions if c] or [""]
        return [captions[(i * len(captions)) // max(k, 1)] for i in range(k)]

    def describe(self, cond: Cond) -> list[str]:
        """The prompt of each row when ``prompts`` made it (matched by its pooled vector), ``(null)`` for the
        null condition, else ``(prompt)``."""
        pooled = cond["pooled"].float().cpu()
        empty = ~cond["context_mask"].bool().any(dim=1)
        out = []
        for i in range(pooled.shape[0]):
            name = self._names.get(pooled[i].numpy().tobytes())
            out.append("(null)" if bool(empty[i]) or name == "" else (name if name is not None else "(prompt)"))
        return out

    # ------------------------------------------------------------------ the network and persistence
    def model_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"num_classes": 0, "context_dim": self.table.dim, "pooled_dim": self.table.pooled_dim}
        if self.null_kind == "learned":
            fields["learned_null"] = True
        return fields

    def save(self, folder: Path) -> None:
        """The feature table (hard-linked or copied) and this description, into ``folder``."""
        folder = Path(folder)
        target = folder / self.table.path.name
        if not (target.exists() and os.path.samefile(target, self.table.path)):
            _link_or_copy(self.table.path, target)
        if self.stats is not None:
            from safetensors.torch import save_file

            atomic_write(folder / STATS_FILE, lambda tmp: save_file(dict(self.stats), str(tmp)))
        atomic_write_json(folder / CONDITION_FILE, self.to_dict(), sort_keys=True)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "encoder": self.encoder_spec, "identity": self.table.identity,
                "max_length": self.max_length, "table": self.table.path.name, "null": self.null_kind,
                "stats": STATS_FILE if self.stats is not None else None,
                "context_dim": self.table.dim, "pooled_dim": self.table.pooled_dim, "examples": list(self.examples)}

    def __repr__(self) -> str:
        return (f"TextCondition(encoder={self.encoder_spec!r}, max_length={self.max_length}, "
                f"captions={len(self.table)}, null={self.null_kind!r})")
