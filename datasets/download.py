"""Fetch a dataset's images from the urls its annotation files list (Intentonomy: each entry's ``unsplash_url``).

* **Polite.** At most ``workers`` requests in flight (default 16), a token bucket of ``rate`` requests per second
  shared by all workers (default 10), and a User-Agent that names the harness, its version and its project page.
* **Retried.** 429, 408 and 5xx answers, timeouts, connection errors, truncated bodies (fewer bytes than the
  Content-Length) and bodies that do not decode are retried with exponential backoff and jitter; a ``Retry-After``
  header (seconds or an HTTP date, capped) is honoured. 404 and 410 are final: the image is gone.
* **Bounded.** Each image may be at most ``max_bytes`` long (default 50 MB): a larger Content-Length or body
  fails it at once, without a retry; bodies stream in chunks, so memory stays ``workers`` x ``CHUNK``. Redirects
  stay on the url's origin (the mirror's with ``--base-url``) unless ``allow_off_origin``. See :mod:`bench.datasets.transfer`.
* **Never half-written, resumable.** Each image streams to ``.<name>.part`` beside its target, is checked (length,
  full decode) and only then renamed onto its final name (``os.replace``). An existing complete, decodable file is
  skipped, so a killed run resumes where it stopped; a stale ``.part`` is overwritten, or removed once its image is
  complete.
* **Reported.** :func:`write_report` lists every image that could not be fetched in ``ROOT/download-report.json``.

The Intentonomy side (which files, which urls) is in :mod:`bench.datasets.download_plan`; the command in
:mod:`bench.cli.data`.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import math
import os
import random
import threading
import time
import urllib.error
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from bench import __version__
from bench.io import atomic_write_text
from bench.datasets.transfer import (CHUNK, MAX_BYTES, DownloadError, Final, Retry, declared_length,  # noqa: F401
                            open_part, open_url, place, receive)

PROJECT_URL = "https://github.com/intent-bench/intent-bench"  # placeholder until the repository is published
USER_AGENT = f"intent-bench/{__version__} (+{PROJECT_URL}; dataset download)"
REPORT = "download-report.json"
REPORT_FORMAT = "bench-download-report/1"
BASE_URL_ENV = "BENCH_DOWNLOAD_BASE_URL"
GONE = (404, 410)

@dataclass(frozen=True)
class Item:
    split: str
    id: str
    url: str  # as fetched (after any --base-url rewrite)
    path: str  # relative to the data root, e.g. low/<md5>.jpg


@dataclass
class Outcome:
    item: Item
    state: str  # present | downloaded | failed
    status: int | None = None  # the last HTTP status (None: no answer, or none needed)
    reason: str = ""
    attempts: int = 0
    bytes: int = 0


@dataclass
class Options:
    workers: int = 16
    rate: float = 10.0  # requests per second across all workers; 0: no limit
    timeout: float = 30.0  # seconds, per connect and per read
    retries: int = 5  # retries after the first attempt
    backoff: float = 1.0  # the first retry's delay ceiling; doubles per retry
    backoff_cap: float = 60.0
    retry_after_cap: float = 120.0
    seed: int | None = None  # the jitter's seed (None: fresh)
    user_agent: str = USER_AGENT
    max_bytes: int = MAX_BYTES  # per image; a larger Content-Length or body fails it at once
    allow_off_origin: bool = False  # follow redirects to another scheme, host or port
    deadline: float = 600.0  # seconds for one image's body: a server trickling inside every timeout fails it


# --------------------------------------------------------------------------------------------------------------
# Urls, rate, backoff
# --------------------------------------------------------------------------------------------------------------


def rewrite_url(url: str, base: str | None) -> str:
    """``url`` with the scheme and host of ``base`` (a mirror), keeping its path and query; a path in ``base`` is
    put in front of the url's path. ``base`` None or empty: ``url`` unchanged."""
    if not base:
        return url
    b = urllib.parse.urlsplit(base)
    if b.scheme not in ("http", "https") or not b.netloc:
        raise DownloadError(f"--base-url / {BASE_URL_ENV} must be an http(s) url with a host, got {base!r}")
    u = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((b.scheme, b.netloc, b.path.rstrip("/") + u.path, u.query, u.fragment))


class TokenBucket:
    """``rate`` requests per second across threads, bursts of at most ``burst``; :meth:`acquire` reserves the next
    slot and sleeps until it comes (a reservation, so waiting threads are served in turn). ``rate <= 0``: no limit."""

    def __init__(self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], object] = time.sleep) -> None:
        self.rate = rate
        self.burst = max(1.0, burst if burst is not None else rate)
        self._clock, self._sleep = clock, sleep
        self._tokens = self.burst
        self._last = clock()
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Take one token; returns the seconds waited for it."""
        if self.rate <= 0:
            return 0.0
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate) - 1
            self._last = now
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            self._sleep(wait)
        return wait


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Delay before retry ``attempt`` (0 = the first retry): exponential with "equal jitter", i.e. half of
    ``min(cap, base * 2**attempt)`` fixed and the other half drawn from ``rng``."""
    ceiling = min(cap, base * 2.0 ** attempt)
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """A ``Retry-After`` header in seconds: delta-seconds or an HTTP date (relative to ``now``, epoch seconds);
    None when absent or unreadable; never negative."""
    if not value or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, seconds) if math.isfinite(seconds) else None


# --------------------------------------------------------------------------------------------------------------
# One image
# --------------------------------------------------------------------------------------------------------------


def part_path(dest: Path) -> Path:
    """Where ``dest`` is written until it is complete: ``.<name>.part`` in the same folder."""
    return dest.with_name(f".{dest.name}.part")


def is_complete(path: Path) -> bool:
    """``path`` is a file that decodes fully (the check ``bench data verify`` makes)."""
    from bench.datasets.manifest import decode_image

    try:
        data = path.read_bytes()
        decode_image(data, None)
    except Exception:  # missing, unreadable, truncated, not an image
        return False
    return True


def _http_error(err: urllib.error.HTTPError) -> Exception:
    code = err.code
    if code in GONE:
        return Final("gone" if code == 410 else "not found", code)
    if code in (408, 429) or code >= 500:
        return Retry(f"HTTP {code}", code, retry_after_seconds(err.headers.get("Retry-After") if err.headers else None))
    return Final(f"HTTP {code} {err.reason}", code)


def _attempt(item: Item, dest: Path, opts: Options, on_bytes: Callable[[int], None]) -> int:
    """One GET of ``item`` into ``dest`` through its ``.part`` file; returns the bytes written."""
    from bench.datasets.manifest import decode_image

    headers = {"User-Agent": opts.user_agent, "Accept": "image/*,*/*;q=0.5"}
    try:
        response = open_url(item.url, headers, opts.timeout, opts.allow_off_origin)
    except urllib.error.HTTPError as err:
        err.close()
        raise _http_error(err) from None
    except urllib.error.URLError as err:
        raise Retry(f"{type(err.reason).__name__}: {err.reason}") from None
    except (OSError, http.client.HTTPException) as err:  # timeouts, resets, bad status lines
        raise Retry(f"{type(err).__name__}: {err}") from None
    part = part_path(dest)
    try:
        with response:
            length = declared_length(response, opts.max_bytes)
            with open_part(part) as fh:
                n = receive(response, fh, opts.max_bytes, on_bytes, time.monotonic() + opts.deadline)
                fh.flush()
                os.fsync(fh.fileno())
        if length is not None and n != length:
            raise Retry(f"truncated: {n} of {length} bytes", response.status)
        try:
            decode_image(part.read_bytes(), None)  # at most max_bytes
        except Exception as err:  # an error page, a cut-off image
            raise Retry(f"not a decodable image ({n} bytes): {err}", response.status) from None
        place(part, dest)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return n


def fetch(item: Item, dest: Path, opts: Options, limiter: TokenBucket, rng: random.Random,
          on_bytes: Callable[[int], None] = lambda n: None, stop: threading.Event | None = None) -> Outcome:
    """Download ``item`` to ``dest`` with retries; the outcome says ``downloaded`` or ``failed`` (and why)."""
    stop = stop or threading.Event()
    last = Retry("not attempted")
    for attempt in range(opts.retries + 1):
        if stop.is_set():
            return Outcome(item, "failed", None, "interrupted", attempt)
        limiter.acquire()
        try:
            n = _attempt(item, dest, opts, on_bytes)
            return Outcome(item, "downloaded", 200, "", attempt + 1, n)
        except Final as err:
            return Outcome(item, "failed", err.status, err.reason, attempt + 1)
        except Retry as err:
            last = err
        if attempt < opts.retries:
            delay = backoff_delay(attempt, opts.backoff, opts.backoff_cap, rng)
            if last.retry_after is not None:
                delay = max(delay, min(last.retry_after, opts.retry_after_cap))
            stop.wait(delay)
    tries = opts.retries + 1
    return Outcome(item, "failed", last.status, f"{last.reason} (gave up after {tries} attempts)", tries)


# --------------------------------------------------------------------------------------------------------------
# Many images
# --------------------------------------------------------------------------------------------------------------


def scan(root: Path, items: list[Item], workers: int) -> tuple[list[Outcome], list[Item]]:
    """Split ``items`` into those already complete under ``root`` (as ``present`` outcomes; their stale ``.part``
    files removed) and those to fetch."""

    def check(item: Item) -> bool:
        dest = root / item.path
        if not is_complete(dest):
            return False
        part_path(dest).unlink(missing_ok=True)
        return True

    with ThreadPoolExecutor(max(1, workers)) as pool:
        done = list(pool.map(check, items))
    present = [Outcome(it, "present") for it, ok in zip(items, done, strict=True) if ok]
    return present, [it for it, ok in zip(items, done, strict=True) if not ok]


def download_all(root: Path, items: list[Item], opts: Options, on_bytes: Callable[[int], None] = lambda n: None,
                 on_done: Callable[[Outcome], None] = lambda o: None) -> list[Outcome]:
    """Fetch every item concurrently (``opts.workers`` threads, one token bucket); outcomes in ``items`` order.
    On an interrupt (or a fatal :class:`DownloadError`) the queued downloads are cancelled and the running ones stop
    at their next retry; complete files stay, no partial file is left under a final name."""
    limiter = TokenBucket(opts.rate)
    rng = random.Random(opts.seed)
    stop = threading.Event()
    pool = ThreadPoolExecutor(max(1, opts.workers), thread_name_prefix="bench-download")
    futures = {pool.submit(fetch, it, root / it.path, opts, limiter, rng, on_bytes, stop): i for i, it in enumerate(items)}
    outcomes: list[Outcome | None] = [None] * len(items)
    try:
        for future in as_completed(futures):
            outcome = future.result()
            outcomes[futures[future]] = outcome
            on_done(outcome)
    except BaseException:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return [o for o in outcomes if o is not None]


def counts(items_by_split: dict[str, int], outcomes: list[Outcome]) -> dict[str, dict[str, int]]:
    """Per split: images listed, already present, downloaded now, failed."""
    out = {s: {"images": n, "present": 0, "downloaded": 0, "failed": 0} for s, n in items_by_split.items()}
    for o in outcomes:
        out[o.item.split][o.state] += 1
    return out


def write_report(root: Path, dataset: str, listed: dict[str, int], outcomes: list[Outcome], base_url: str | None,
                 opts: Options) -> Path:
    """``ROOT/download-report.json`` (atomically): counts per split and every image that could not be fetched."""
    failed = [o for o in outcomes if o.state == "failed"]
    payload = {
        "format": REPORT_FORMAT,
        "dataset": dataset,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "root": str(root.resolve()),
        "base_url": base_url or None,
        "user_agent": opts.user_agent,
        "counts": counts(listed, outcomes),
        "failed": [{"id": o.item.id, "split": o.item.split, "url": o.item.url, "path": o.item.path,
                    "status": o.status, "reason": o.reason, "attempts": o.attempts} for o in failed],
    }
    path = root / REPORT
    atomic_write_text(path, json.dumps(payload, indent=1) + "\n")
    return path
