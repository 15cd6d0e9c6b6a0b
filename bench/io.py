"""Files that readers never see half-written, and file hashes: the one helper every writer in the harness uses.

:func:`atomic_write` writes through a temp file in the target's folder (so the rename cannot cross file systems),
flushes and fsyncs it, gives it the permissions a plain ``open`` would (mkstemp's are 0600), and renames it over the
target; when anything fails, the temp file is removed and the error goes on, so a failed write leaves the old file
(or none) and no debris.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def atomic_write(path: Path | str, write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write(fh)`` on a temp file beside ``path`` and rename it over ``path`` once complete. A full disk is
    reported as :class:`~bench.errors.DiskFullError` naming ``path`` (after the temp file is removed)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise _disk_full(err, path) from err
    try:
        with _open_temp(fd) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise _disk_full(err, path) from err
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _open_temp(fd: int) -> IO[bytes]:
    """The temp file's handle (a seam: the full-disk tests put a device with a byte budget here)."""
    return os.fdopen(fd, "wb")


def _disk_full(err: OSError, path: Path) -> OSError:
    """``err`` itself, or a :class:`DiskFullError` naming ``path`` when the device is full (ENOSPC, EDQUOT)."""
    from bench.errors import DiskFullError

    if err.errno not in (errno.ENOSPC, errno.EDQUOT) or isinstance(err, DiskFullError):
        return err
    return DiskFullError(f"No space left on device at {path} (writing it failed; nothing was left half-written)")


def free_bytes(folder: Path | str) -> int:
    """Free bytes on the device that holds ``folder`` (or, before it exists, its nearest existing parent)."""
    folder = Path(folder)
    probe = folder if folder.exists() else next((p for p in folder.parents if p.exists()), Path("/"))
    return shutil.disk_usage(probe).free


def ensure_free_space(folder: Path | str, need: int, what: str) -> None:
    """Fail before a long job when ``folder``'s device has less than ``need`` bytes free (``what`` says for what)."""
    from bench.errors import DiskFullError

    folder = Path(folder)
    free = free_bytes(folder)
    if free < need:
        raise DiskFullError(f"No space left on device at {folder}: {what} needs about {need / 1e6:,.0f} MB, "
                            f"{free / 1e6:,.0f} MB free")


def atomic_write_bytes(path: Path | str, payload: bytes) -> None:
    atomic_write(path, lambda fh: fh.write(payload))


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save(obj: Any, path: Path | str) -> None:
    """``torch.save(obj)`` to ``path``, atomically. Serialised in memory first, then written with plain writes, so
    a full disk surfaces as ENOSPC (:class:`DiskFullError`) rather than torch's "unexpected pos" stream error."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write(path, lambda fh: fh.write(buf.getbuffer()))


def sha256_file(path: Path | str, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()
