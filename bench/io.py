"""Files that readers never see half-written, and file hashes: the one helper every writer in the harness uses.

:func:`atomic_write` writes through a temp file in the target's folder (so the rename cannot cross file systems),
flushes and fsyncs it, gives it the permissions a plain ``open`` would (mkstemp's are 0600), and renames it over the
target; when anything fails, the temp file is removed and the error goes on, so a failed write leaves the old file
(or none) and no debris.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def atomic_write(path: Path | str, write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write(fh)`` on a temp file beside ``path`` and rename it over ``path`` once complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path | str, payload: bytes) -> None:
    atomic_write(path, lambda fh: fh.write(payload))


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save(obj: Any, path: Path | str) -> None:
    """``torch.save(obj)`` to ``path``, atomically."""
    import torch

    atomic_write(path, lambda fh: torch.save(obj, fh))


def sha256_file(path: Path | str, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()
