"""One bounded HTTP transfer for :mod:`bench.datasets.download`: the GET (redirects kept on the url's origin), the body
streamed in chunks into a ``.part`` file under a byte limit, and the two outcomes a failed attempt can have
(:class:`Retry`: try again later; :class:`Final`: this image fails now).

* **Bounded.** A Content-Length over the limit fails the image before a byte is read; a body that grows past the
  limit (no Content-Length, a chunked body whatever its Content-Length says, an endless stream) fails it as soon
  as the limit is crossed. Nothing is held in memory but the chunk being written, so a transfer costs at most
  ``CHUNK`` bytes of memory and ``limit + 1`` bytes of disk; neither is retried.
* **On origin.** A redirect is followed only to the same scheme, host and port as the url asked for (the mirror's
  when ``--base-url`` is given); others fail the image unless ``allow_off_origin``. Only http(s) is ever followed.
* **No link followed when writing.** The ``.part`` file is created afresh (``O_EXCL | O_NOFOLLOW``), so a link
  planted under its name is replaced, never written through.
"""

from __future__ import annotations

import http.client
import os
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from bench.errors import BenchError

CHUNK = 1 << 16
MAX_BYTES = 50_000_000  # per image: Intentonomy's photos are ~0.1-2 MB
DEFAULT_PORTS = {"http": 80, "https": 443}


class Retry(Exception):
    def __init__(self, reason: str, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason, self.status, self.retry_after = reason, status, retry_after


class Final(Exception):
    def __init__(self, reason: str, status: int | None) -> None:
        super().__init__(reason)
        self.reason, self.status = reason, status


class DownloadError(BenchError):
    """A download that cannot go on at all (bad --base-url, a file that cannot be written: disk full, no
    permission): the whole run stops."""


def origin(url: str) -> tuple[str, str, int | None]:
    """``(scheme, host, port)`` of ``url``, lower-cased, the scheme's default port filled in."""
    u = urllib.parse.urlsplit(url)
    scheme = u.scheme.lower()
    try:
        port = u.port
    except ValueError:  # a port that is not a number
        port = -1
    return scheme, (u.hostname or "").lower(), port if port is not None else DEFAULT_PORTS.get(scheme)


def origin_text(url: str) -> str:
    scheme, host, port = origin(url)
    return f"{scheme}://{host}:{port}"


class OriginRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to http(s), and (unless ``allow_off_origin``) only to ``allowed``'s origin."""

    def __init__(self, allowed: str, allow_off_origin: bool) -> None:
        super().__init__()
        self.allowed, self.allow_off_origin = origin(allowed), allow_off_origin

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        target = origin(newurl)
        if target[0] not in DEFAULT_PORTS:
            fp.close()
            raise Final(f"redirect to {newurl} refused: only http(s) is followed", code)
        if target != self.allowed and not self.allow_off_origin:
            fp.close()
            raise Final(f"redirect to {newurl} refused: off the origin {origin_text(req.full_url)} "
                        "(--allow-redirects-off-origin follows it)", code)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def open_url(url: str, headers: dict[str, str], timeout: float, allow_off_origin: bool):
    """The response to a GET of ``url`` (redirects checked); urllib's errors are the caller's to sort."""
    opener = urllib.request.build_opener(OriginRedirects(url, allow_off_origin))
    return opener.open(urllib.request.Request(url, headers=headers), timeout=timeout)


def declared_length(response, limit: int) -> int | None:
    """The Content-Length (None: absent or unreadable); over ``limit`` it fails the image before any byte is read."""
    value = (response.headers.get("Content-Length") or "").strip()
    if not value.isdigit():
        return None
    length = int(value)
    if length > limit:
        raise Final(f"too large: Content-Length {length:,} bytes is over the limit of {limit:,} bytes (--max-bytes)",
                    response.status)
    return length


def open_part(part: Path):
    """``part`` as a new, empty file opened for writing; whatever was there (a stale file, a link) is removed first."""
    try:
        part.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as err:  # a file where the image's folder should be
        raise Final(f"cannot write {part.parent}: {err.strerror or err}", None) from None
    except OSError as err:
        raise DownloadError(f"cannot write {part}: {err}") from None
    try:
        part.unlink(missing_ok=True)
        return open(part, "xb", opener=lambda path, flags: os.open(path, flags | getattr(os, "O_NOFOLLOW", 0), 0o666))
    except IsADirectoryError as err:
        raise Final(f"cannot write {part}: {err.strerror or err}", None) from None
    except OSError as err:
        raise DownloadError(f"cannot write {part}: {err}") from None


def receive(response, fh, limit: int, on_bytes: Callable[[int], None], deadline: float | None = None) -> int:
    """Stream the body into ``fh`` chunk by chunk; returns its length. More than ``limit`` bytes: :class:`Final`
    (at most ``limit + 1`` bytes are read); still streaming at ``deadline`` (``time.monotonic()``): :class:`Final`,
    so a server that sends a byte inside every read timeout cannot hold a worker; network failures: :class:`Retry`."""
    total = 0
    while True:
        if deadline is not None and time.monotonic() > deadline:
            raise Final(f"too slow: {total:,} bytes when the deadline passed (--deadline)", response.status)
        try:  # what has arrived, so the byte count moves while a file streams
            block = response.read1(min(CHUNK, limit + 1 - total))
        except (OSError, http.client.HTTPException) as err:  # timeout, reset, incomplete chunked body
            raise Retry(f"{type(err).__name__} while reading: {err}", response.status) from None
        if not block:
            return total
        total += len(block)
        if total > limit:
            raise Final(f"too large: the body is over the limit of {limit:,} bytes (--max-bytes)", response.status)
        try:
            fh.write(block)
        except OSError as err:
            raise DownloadError(f"cannot write {fh.name}: {err}") from None
        on_bytes(len(block))


def place(part: Path, dest: Path) -> None:
    """Rename the complete ``part`` onto ``dest``; a folder in the way fails the image, other errors the run."""
    try:
        os.replace(part, dest)
    except (IsADirectoryError, NotADirectoryError) as err:
        raise Final(f"cannot write {dest}: {err.strerror or err}", None) from None
    except OSError as err:
        raise DownloadError(f"cannot write {dest}: {err}") from None
