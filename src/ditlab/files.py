"""Crash-safe file writes: every file a run, cache or command writes goes through ``atomic_write``.

A file is written under a hidden temporary name in its own folder, flushed and fsynced, renamed over
the final name (atomic on POSIX), and the folder is fsynced so the rename itself survives a power cut.
A reader therefore sees the old file or the new one, never half of one, and a crash leaves at most a
stale ``.NAME.tmp.PID`` file, which the next write of the same name replaces.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

Writer = Callable[[Path], None]


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a folder (makes renames inside it durable); a no-op where the OS cannot."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike) -> None:
    """Flush one file's data to disk."""
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def temporary_name(path: str | os.PathLike) -> Path:
    """The hidden temporary sibling a write of ``path`` goes through (``.NAME.tmp.PID``, same suffix)."""
    path = Path(path)
    return path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")


def atomic_write(path: str | os.PathLike, data: bytes | str | Writer, *, durable: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically.

    Args:
        path: the final file name; its folder is created if needed.
        data: bytes, text (UTF-8), or a function ``write(tmp_path)`` that writes the file itself (for
            libraries that only write to a path: safetensors, numpy, PIL, matplotlib). The temporary
            name keeps the final suffix, so such writers pick the right format.
        durable: fsync the file and its folder (off only for throw-away outputs).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        if callable(data):
            data(tmp)
        else:
            with open(tmp, "wb") as f:
                f.write(data.encode() if isinstance(data, str) else data)
        if durable:
            fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    if durable:
        fsync_dir(path.parent)
    return path


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int = 2, sort_keys: bool = False) -> Path:
    """``atomic_write`` of ``obj`` as JSON text with a final newline."""
    return atomic_write(path, json.dumps(obj, indent=indent, sort_keys=sort_keys) + "\n")
