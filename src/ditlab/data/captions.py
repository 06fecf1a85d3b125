"""Captions for an image folder: Hugging Face ImageFolder ``metadata.jsonl`` files or ``NAME.txt`` sidecars.

Two ways to caption ``photos/cat.png``, checked in this order for each image:

1. **metadata.jsonl** (the Hugging Face ImageFolder convention; an image it lists takes its
   captions from it alone): one JSON object per line,
   ``{"file_name": "cat.png", "text": "a cat on a mat"}``, where ``file_name`` is relative to the
   folder holding that ``metadata.jsonl`` (one may sit in any subfolder) and ``text`` is a caption
   or a list of captions (one is drawn per use). Blank lines are ignored; an image listed on several
   lines gets all their captions. ``"text": null``, ``""`` or ``[]`` means "no caption".
2. **A sidecar** ``photos/cat.txt`` next to the image: **each non-empty line is one caption**
   (so a one-line file is one caption, and a file may hold several alternatives, like a list in
   ``metadata.jsonl``). Surrounding whitespace is stripped; a UTF-8 byte-order mark is allowed.

Bad input (issue 12): a metadata line that is not a JSON object with a ``file_name`` and a
``text`` of string(s) raises :class:`CaptionError` naming the file and line; a metadata file or
sidecar that is not UTF-8 raises it naming the file. An image named in metadata that is not in
the folder is skipped and counted; an image with no caption at all gets the empty caption ``""``
and is counted. :class:`CaptionReport` holds both counts and prints them in one line.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ditlab.data.folder import _scan
from ditlab.errors import DataError

METADATA_NAME = "metadata.jsonl"
CAPTION_KEY = "text"


class CaptionError(DataError):
    """A metadata or caption file that cannot be read."""


@dataclass
class CaptionReport:
    """What :func:`read_captions` found: counts, and the names behind them (for the end-of-run report)."""

    images: int = 0
    from_metadata: int = 0
    from_sidecar: int = 0
    uncaptioned: list[str] = field(default_factory=list)  # images that train with the empty caption
    missing: list[str] = field(default_factory=list)  # "metadata.jsonl:LINE: file_name" of absent images
    metadata_files: list[str] = field(default_factory=list)

    @property
    def captioned(self) -> int:
        return self.images - len(self.uncaptioned)

    def summary(self, show: int = 3) -> str:
        """One line, e.g. ``captions: 98 of 100 images (metadata 90, .txt 8); 2 without a caption ...``."""
        parts = [f"captions: {self.captioned} of {self.images} images (metadata {self.from_metadata}, "
                 f".txt {self.from_sidecar})"]
        if self.uncaptioned:
            names = ", ".join(os.path.basename(p) for p in self.uncaptioned[:show])
            more = ", ..." if len(self.uncaptioned) > show else ""
            parts.append(f"{len(self.uncaptioned)} without a caption train with the empty caption ({names}{more})")
        if self.missing:
            more = ", ..." if len(self.missing) > show else ""
            parts.append(f"{len(self.missing)} metadata entries name images that are not in the folder and were "
                         f"skipped ({', '.join(self.missing[:show])}{more})")
        return "; ".join(parts)

    def __str__(self) -> str:
        return self.summary()


def _decode(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise CaptionError(f"{path} is not UTF-8 text (line {line}): save it as UTF-8") from err


def _as_captions(value, where: str) -> list[str]:
    """A ``text`` value -> a list of non-empty stripped captions."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CaptionError(f"{where}: \"{CAPTION_KEY}\" must be a string or a list of strings, "
                           f"got {type(value).__name__}: fix that line")
    return [v.strip() for v in value if v.strip()]


def _read_metadata(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line number, file_name, captions) for each non-blank line of one metadata.jsonl."""
    rows = []
    for lineno, line in enumerate(_decode(path).splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path} line {lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise CaptionError(f"{where} is not JSON ({err.msg}): write one JSON object per line") from err
        if not isinstance(obj, dict):
            raise CaptionError(f"{where} is not a JSON object: write {{\"file_name\": ..., \"{CAPTION_KEY}\": ...}}")
        name = obj.get("file_name")
        if not isinstance(name, str) or not name:
            raise CaptionError(f"{where} has no \"file_name\": write {{\"file_name\": ..., \"{CAPTION_KEY}\": ...}}")
        if CAPTION_KEY not in obj:
            keys = ", ".join(sorted(k for k in obj if k != "file_name")) or "none"
            raise CaptionError(f"{where} has no \"{CAPTION_KEY}\" field (other keys: {keys}): "
                               f"name the caption field \"{CAPTION_KEY}\"")
        rows.append((lineno, name, _as_captions(obj[CAPTION_KEY], where)))
    return rows


def _sidecar(image: str) -> Path:
    return Path(os.path.splitext(image)[0] + ".txt")


def read_captions(root: str | os.PathLike, files: Sequence[str] | None = None
                  ) -> tuple[dict[str, list[str]], CaptionReport]:
    """Captions of every image under ``root``; see the module doc for the two conventions.

    Args:
        root: the image folder.
        files: the image paths to caption (default: every image under ``root``, as
            ``ImageFolderDataset`` lists them); the returned mapping uses these exact strings as keys.

    Returns:
        ``{image path: [caption, ...]}`` for every image (``[""]`` for one without a caption), and a
        :class:`CaptionReport`.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"caption folder {root} does not exist or is not a folder: pass the image folder")
    files = list(_scan(root) if files is None else files)
    by_norm = {os.path.normpath(os.path.abspath(f)): f for f in files}
    report = CaptionReport(images=len(files))
    captions: dict[str, list[str]] = {}
    listed: set[str] = set()
    meta_files = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if METADATA_NAME in filenames:
            meta_files.append(Path(dirpath) / METADATA_NAME)
    for meta in sorted(meta_files):
        report.metadata_files.append(str(meta))
        for lineno, name, caps in _read_metadata(meta):
            key = by_norm.get(os.path.normpath(os.path.abspath(meta.parent / name)))
            if key is None:
                report.missing.append(f"{meta.relative_to(root)}:{lineno}: {name}")
                continue
            listed.add(key)
            captions.setdefault(key, []).extend(caps)
    for f in files:
        caps = captions.get(f, [])
        if caps:
            report.from_metadata += 1
        elif f not in listed and _sidecar(f).is_file():
            caps = [line.strip() for line in _decode(_sidecar(f)).splitlines() if line.strip()]
            report.from_sidecar += bool(caps)
        if not caps:
            report.uncaptioned.append(f)
            caps = [""]
        captions[f] = caps
    return {f: captions[f] for f in files}, report
