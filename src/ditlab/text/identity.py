"""Content digests of model folders, so that a cached feature table knows which weights made it.

Hashing a multi-gigabyte T5 every time it loads would cost a minute, so each file's SHA-256 is
remembered (in memory and in ``$DITLAB_CACHE/file_digests.json``) under its path, size and
modification time: a changed or replaced file gets a new entry and is hashed again.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

from ditlab.files import atomic_write

# The files that decide a text encoder's features: weights, configs, tokenizer vocabularies.
_SUFFIXES = (".safetensors", ".bin", ".json", ".txt", ".model", ".pt", ".pth")
_SKIP = {"README.md", "data_config.json", ".gitattributes"}
_MEMORY: dict[str, str] = {}


def _cache_file() -> Path:
    env = os.environ.get("DITLAB_CACHE")
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "ditlab"
    return root / "file_digests.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def file_digests(paths: list[Path]) -> dict[str, str]:
    """SHA-256 of each file, reusing remembered digests of unchanged files."""
    disk_path = _cache_file()
    try:
        disk = json.loads(disk_path.read_text(encoding="utf-8"))
        disk = disk if isinstance(disk, dict) else {}
    except (OSError, ValueError):
        disk = {}
    out, changed = {}, False
    for p in paths:
        st = p.stat()
        key = f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        digest = _MEMORY.get(key) or disk.get(key)
        if digest is None:
            digest = _sha256(p)
            disk[key] = digest
            changed = True
        _MEMORY[key] = digest
        out[str(p)] = digest
    if changed:
        with contextlib.suppress(OSError):  # a read-only cache only costs a re-hash next time
            atomic_write(disk_path, json.dumps(disk), durable=False)
    return out


def folder_digest(*folders: Path) -> str:
    """One short digest over the relevant files of ``folders`` (names and contents), order-independent."""
    h = hashlib.sha256()
    for folder in folders:
        files = sorted(
            p for p in folder.rglob("*")
            if p.is_file() and p.suffix in _SUFFIXES and p.name not in _SKIP and not p.name.startswith(".")
        )
        digests = file_digests(files)
        for p in files:
            h.update(f"{p.relative_to(folder).as_posix()}={digests[str(p)]}\n".encode())
    return h.hexdigest()[:16]
