"""Atomic file writes: a reader (or a rerun after a crash) sees the old file or the complete new one.

The temporary file lives in the target folder, hidden, because ``os.replace`` is atomic only
within one file system; it is removed again when writing fails.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from contextlib import suppress
from typing import Any, BinaryIO


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then move it onto ``path``.

    Args:
        path: the file to create or replace; its folder is created when missing.
        write: writes the content into the binary file object it is given.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    # a name of this process and thread (not mkstemp: its files are private to the owner, 0600)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, value: Any, **dumps_options: Any) -> None:
    """Write ``json.dumps(value, **dumps_options)`` to ``path`` atomically (``indent=2`` unless given)."""
    dumps_options.setdefault("indent", 2)
    atomic_write_text(path, json.dumps(value, **dumps_options))
