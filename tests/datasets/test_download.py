"""``bench data download`` against local HTTP servers (127.0.0.1, free ports): generated annotation files in the
official Intentonomy format, generated JPEGs, and a server that answers 404/410, 429 with Retry-After, 500, too
slowly, or with a truncated body for chosen images; a client killed mid-download and a server killed and restarted.

The image name in each url says how the server treats it: ``ok-*`` (or any other name) served, ``g404-*`` /
``g410-*`` always gone, ``r429-*`` 429 + ``Retry-After: 1`` once, ``e500-*`` 500 once, ``slow-*`` answers after the
client's timeout once, ``trunc-*`` sends half its Content-Length once. Hostile ones: ``endless-*`` streams a body
that never ends (no Content-Length), ``big-*`` sends ``server.big`` bytes with their Content-Length, ``bignl-*``
without it, ``lie-*`` claims ``Content-Length: 1000`` but sends ``server.big`` bytes chunked, ``fit-*`` sends
exactly ``server.fit`` bytes; ``redir-X`` redirects to ``X`` on ``server.redirect_to``, ``sredir-X`` to ``X`` on
itself. Run as a script (``serve``), this file is the server of the restart test.
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import bench  # noqa: E402  (after the environment is set)
from tests.conftest import REPO
from bench.datasets.download import USER_AGENT, DownloadError, TokenBucket, backoff_delay, retry_after_seconds, rewrite_url  # noqa: E402

SHARED = REPO.parent / "shared" / "data" / "intentonomy"
TIMEOUT = 2.5  # the client's --timeout in these tests; slow-* waits SLOW before answering
SLOW = 4.0


def image_bytes(name: str) -> bytes:
    """The JPEG the servers serve for ``name`` (deterministic, ~10 kB of noise)."""
    rng = np.random.default_rng(int(hashlib.md5(name.encode()).hexdigest()[:8], 16))
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def padded(name: str, size: int) -> bytes:
    """``name``'s JPEG followed by zeros up to ``size`` bytes (it still decodes: trailing bytes are ignored)."""
    body = image_bytes(name)
    return body + bytes(size - len(body))


def md5(name: str) -> str:
    return hashlib.md5(name.encode()).hexdigest()


class Handler(http.server.BaseHTTPRequestHandler):
    server_version = "test-images/1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        srv = self.server
        url = urllib.parse.urlsplit(self.path)
        name = url.path.removeprefix("/photo-")
        with srv.lock:
            srv.hits[name] += 1
            n = srv.hits[name]
            srv.log.append((time.monotonic(), name, self.headers.get("User-Agent"), url.query))
        kind = name.split("-")[0]
        body = image_bytes(name)
        try:
            if "q=30" not in url.query.split("&"):
                self.send_error(400, "query lost")
            elif kind in ("endless", "big", "bignl", "lie", "fit", "redir", "sredir", "drip"):
                self._hostile(kind, name, url.query)
            elif kind in ("g404", "g410"):
                self.send_error(int(kind[1:]))
            elif kind == "r429" and n == 1:
                self.send_response(429)
                self.send_header("Retry-After", "1")
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif kind == "e500" and n == 1:
                self.send_error(500)
            elif kind == "trunc" and n == 1:
                self._send(body, len(body), body[: len(body) // 2])
            else:
                if kind == "slow" and n == 1:
                    time.sleep(SLOW)
                self._send(body, len(body), body)
                srv.completed(name)
        except OSError:  # the client gave up (timeout) or was killed
            pass

    def _hostile(self, kind: str, name: str, query: str) -> None:
        srv = self.server
        if kind in ("redir", "sredir"):
            self.send_response(302)
            target = srv.redirect_to if kind == "redir" else srv.url
            self.send_header("Location", f"{target}/photo-{name.split('-', 1)[1]}?{query}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        body = padded(name, srv.fit if kind == "fit" else srv.big)
        if kind in ("big", "fit"):
            self.send_header("Content-Length", str(len(body)))
        elif kind == "lie":
            self.send_header("Content-Length", "1000")
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if kind == "drip":  # one byte every 50 ms, inside any read timeout, until the client hangs up
            while True:
                self.wfile.write(b"\0")
                self.wfile.flush()
                time.sleep(0.05)
        if kind == "endless":  # until the client hangs up
            self.wfile.write(image_bytes(name))
            block = bytes(1 << 16)
            while True:
                self.wfile.write(block)
        for start in range(0, len(body), 1 << 16):
            block = body[start : start + (1 << 16)]
            self.wfile.write(f"{len(block):x}\r\n".encode() + block + b"\r\n" if kind == "lie" else block)
        if kind == "lie":
            self.wfile.write(b"0\r\n\r\n")
        srv.completed(name)

    def _send(self, body: bytes, length: int, payload: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(length))
        self.end_headers()
        for start in range(0, len(payload), 1024):
            self.wfile.write(payload[start : start + 1024])
            self.wfile.flush()
            if self.server.chunk_delay:
                time.sleep(self.server.chunk_delay)


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int = 0, chunk_delay: float = 0.0, done_log: Path | None = None) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.lock = threading.Lock()
        self.hits: Counter[str] = Counter()
        self.log: list[tuple[float, str, str | None, str]] = []
        self.done: list[str] = []
        self.chunk_delay = chunk_delay
        self.done_log = done_log
        self.big, self.fit = 2_000_000, 1_000_000
        self.redirect_to = self.url

    def completed(self, name: str) -> None:
        with self.lock:
            self.done.append(name)
            if self.done_log is not None:
                with open(self.done_log, "a") as fh:
                    fh.write(name + "\n")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


def write_annotations(folder: Path, spec: dict[str, list[str]], filenames: dict[str, str] | None = None) -> None:
    """``intentonomy_<split>2020.json`` per split in the official format, one image per name (its filename
    ``low/<md5>.jpg`` unless ``filenames`` gives another)."""
    from bench.datasets.intentonomy import class_infos

    categories = [{"id": i, "name": c.key} for i, c in enumerate(class_infos()[0])]
    folder.mkdir(parents=True, exist_ok=True)
    for split, names in spec.items():
        images, annotations = [], []
        for i, name in enumerate(names):
            filename = (filenames or {}).get(name, f"low/{md5(name)}.jpg")
            images.append({"id": md5(name), "filename": filename, "original_id": name,
                           "unsplash_url": f"https://images.unsplash.com/photo-{name}?ixid=eyJhcHBfaWQiOi0xM30=&q=30"})
            if split == "train":
                soft = [0.0] * 28
                soft[i % 28] = 2 / 3
                annotations.append({"id": i, "image_id": md5(name), "category_ids_softprob": soft})
            else:
                annotations.append({"id": i, "image_id": md5(name), "category_ids": [i % 28]})
        data = {"info": {"description": "test"}, "categories": categories, "images": images, "annotations": annotations}
        (folder / f"intentonomy_{split}2020.json").write_text(json.dumps(data))


def args(root: Path, base: str, *more: str) -> list[str]:
    return ["data", "download", "-d", "intentonomy", "--root", str(root), "--base-url", base, "--workers", "4",
            "--rate", "0", "--timeout", str(TIMEOUT), "--retries", "3", "--backoff", "0.05", "--no-progress",
            "--set", f"paths.cache={root.parent / 'cache'}", *more]


def served(root: Path, names: list[str]) -> None:
    """Every name's file is complete under its final name and byte-identical to what the server serves."""
    for name in names:
        assert (root / "low" / f"{md5(name)}.jpg").read_bytes() == image_bytes(name), name


# --------------------------------------------------------------------------------------------------------------
# Fixtures and helpers
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture
def server():
    srv = Server()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join()


def invoke(argv: list[str], **kw):
    from bench.cli.app import app

    return CliRunner().invoke(app, argv, **kw)


def report(root: Path) -> dict:
    return json.loads((root / "download-report.json").read_text())


def all_names(spec: dict[str, list[str]]) -> list[str]:
    return [n for names in spec.values() for n in names]


def bench_subprocess(argv: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "bench", *argv], cwd=cwd, env=env, stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT)


def wait_for(condition, what: str, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


# --------------------------------------------------------------------------------------------------------------
# The pieces
# --------------------------------------------------------------------------------------------------------------


def test_rate_backoff_retry_after_and_base_url():
    now = [100.0]
    slept: list[float] = []
    bucket = TokenBucket(10.0, burst=2, clock=lambda: now[0], sleep=slept.append)
    waits = [bucket.acquire() for _ in range(5)]  # two from the burst, then one slot per 0.1 s, reserved in turn
    assert waits == pytest.approx([0.0, 0.0, 0.1, 0.2, 0.3]) and slept == pytest.approx([0.1, 0.2, 0.3])
    assert TokenBucket(0).acquire() == 0.0

    import random

    a = [backoff_delay(k, 1.0, 8.0, random.Random(7)) for k in range(6)]
    assert a == [backoff_delay(k, 1.0, 8.0, random.Random(7)) for k in range(6)]  # seeded: reproducible
    for k, d in enumerate(a):
        ceiling = min(8.0, 2.0 ** k)
        assert ceiling / 2 <= d <= ceiling

    assert retry_after_seconds("7") == 7.0 and retry_after_seconds(" 0 ") == 0.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490.0) == 0.0  # in the past: at once
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None and retry_after_seconds("nan") is None

    url = "https://images.unsplash.com/photo-1453134665671-824f7b70305b?ixid=eyJh==&q=30"
    assert rewrite_url(url, "http://127.0.0.1:8080") == "http://127.0.0.1:8080/photo-1453134665671-824f7b70305b?ixid=eyJh==&q=30"
    assert rewrite_url(url, "https://mirror.example/unsplash/") == "https://mirror.example/unsplash/photo-1453134665671-824f7b70305b?ixid=eyJh==&q=30"
    assert rewrite_url(url, None) == url
    with pytest.raises(DownloadError):
        rewrite_url(url, "mirror.example")
    assert USER_AGENT.startswith(f"intent-bench/{bench.__version__} (+https://")


# --------------------------------------------------------------------------------------------------------------
# Downloads against the local server
# --------------------------------------------------------------------------------------------------------------

SPEC = {
    "train": ["ok-t1", "ok-t2", "g404-t3", "g410-t4", "e500-t5"],
    "val": ["ok-v1", "r429-v2", "slow-v3", "trunc-v4"],
    "test": ["ok-x1", "e500-x2", "trunc-x3", "slow-x4", "r429-x5"],
}
FLAKY = ("r429", "e500", "slow", "trunc")


@pytest.mark.slow
def test_download_retries_recovers_and_reports(server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "root"
    write_annotations(root / "annotations", SPEC)
    result = invoke(args(root, server.url))
    assert result.exit_code == 0, result.output  # only train images are gone
    recoverable = [n for n in all_names(SPEC) if not n.startswith("g4")]
    served(root, recoverable)
    assert sorted(p.name for p in (root / "low").iterdir()) == sorted(f"{md5(n)}.jpg" for n in recoverable)  # no .part
    assert dict(server.hits) == {n: 2 if n.split("-")[0] in FLAKY else 1 for n in all_names(SPEC)}  # 404/410: no retry
    assert {ua for _, _, ua, _ in server.log} == {USER_AGENT}
    for name in ("r429-v2", "r429-x5"):  # Retry-After: 1 was honoured
        first, second = [t for t, n, _, _ in server.log if n == name]
        assert second - first >= 1.0
    rep = report(root)
    assert sorted((f["split"], f["id"], f["status"]) for f in rep["failed"]) == [("train", md5("g404-t3"), 404), ("train", md5("g410-t4"), 410)]
    assert all(f["url"].startswith(f"{server.url}/photo-g4") and f["url"].endswith("&q=30") and f["attempts"] == 1 for f in rep["failed"])
    assert rep["counts"] == {"train": {"images": 5, "present": 0, "downloaded": 3, "failed": 2},
                             "val": {"images": 4, "present": 0, "downloaded": 4, "failed": 0},
                             "test": {"images": 5, "present": 0, "downloaded": 5, "failed": 0}}
    assert "train: 2 images could not be fetched" in result.output
    assert "manifest sha256" in result.output and "train: low/" in result.output  # verify ran, train losses counted

    server.hits.clear()  # a rerun skips every complete file and asks only for the gone ones again
    again = invoke(args(root, server.url))
    assert again.exit_code == 0, again.output
    assert dict(server.hits) == {"g404-t3": 1, "g410-t4": 1}
    assert report(root)["counts"]["test"] == {"images": 5, "present": 5, "downloaded": 0, "failed": 0}
    served(root, recoverable)


def test_a_lost_val_or_test_image_exits_1(server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "root"
    write_annotations(root / "annotations", {"train": ["ok-a1", "g404-a2"], "val": ["ok-b1", "g410-b2"], "test": ["ok-c1", "g404-c2"]})
    result = invoke(args(root, server.url))
    assert result.exit_code == 1, result.output
    assert sorted((f["split"], f["status"]) for f in report(root)["failed"]) == [("test", 404), ("train", 404), ("val", 410)]
    assert "1 val, 1 test images could not be fetched" in " ".join(result.output.split())
    served(root, ["ok-a1", "ok-b1", "ok-c1"])


def test_an_offline_machine_is_named_and_failures_are_not_listed_one_per_image(tmp_path, monkeypatch):
    """Every request unanswered (a closed port): the log names the likely cause once and lists only the first
    failures, not one line per image; the report still holds every one."""
    import socket

    monkeypatch.chdir(tmp_path)
    with socket.socket() as sock:  # a port nobody listens on: every connection is refused
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    root = tmp_path / "root"
    names = {"train": [f"ok-t{i}" for i in range(18)], "val": [f"ok-v{i}" for i in range(4)], "test": [f"ok-c{i}" for i in range(4)]}
    write_annotations(root / "annotations", names)
    result = invoke(args(root, closed, "--retries", "0"))
    assert result.exit_code == 1, result.output  # val/test lost
    per_image = [line for line in result.output.splitlines() if line.split(" ")[0] in ("train", "val", "test") and "no answer" in line]
    assert len(per_image) == 10  # the first 10 failures, not one line for each of the 26
    text = " ".join(result.output.split())
    assert "further failures are counted, not listed" in text
    assert "the first 20 requests all failed without an answer" in text and "looks offline" in text
    assert len(report(root)["failed"]) == 26


def test_dry_run_fetches_nothing_and_says_what_it_would(server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root, ann = tmp_path / "root", tmp_path / "official"
    spec = {"train": ["ok-d1", "ok-d2", "ok-d3"], "val": ["ok-d4", "ok-d5"], "test": ["ok-d6"]}
    write_annotations(ann, spec)
    (root / "low").mkdir(parents=True)
    (root / "low" / f"{md5('ok-d1')}.jpg").write_bytes(image_bytes("ok-d1"))
    base = ["data", "download", "-d", "intentonomy", "--root", str(root), "--annotations", str(ann), "--no-progress"]
    env = {"BENCH_DOWNLOAD_BASE_URL": server.url}  # the mirror from the environment
    result = invoke([*base, "--dry-run"], env=env)
    assert result.exit_code == 0, result.output
    assert sum(server.hits.values()) == 0
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == ["low", f"low/{md5('ok-d1')}.jpg"]
    lines = result.output.splitlines()
    for split, row in {"train": "3 1 2 0", "val": "2 0 2 0", "test": "1 0 1 0"}.items():
        assert any(line.replace("│", " ").split() == [split, *row.split()] for line in lines), (split, result.output)
    assert f"{server.url}/photo-ok-d2?ixid=eyJhcHBfaWQiOi0xM30=&q=30" in result.output
    assert f"would fetch 5 images into {root}" in result.output

    result = invoke([*base, "--workers", "2", "--set", f"paths.cache={tmp_path / 'cache'}"], env=env)
    assert result.exit_code == 0, result.output
    assert dict(server.hits) == {n: 1 for n in all_names(spec) if n != "ok-d1"}
    served(root, all_names(spec))
    for split in spec:  # copied into the root, where verify found them
        name = f"intentonomy_{split}2020.json"
        assert (root / "annotations" / name).read_bytes() == (ann / name).read_bytes()


def test_stale_part_and_corrupt_files_are_replaced(server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "root"
    spec = {"train": ["ok-s1", "ok-s2", "ok-s3"], "val": ["ok-s4"], "test": ["ok-s5"]}
    write_annotations(root / "annotations", spec)
    low = root / "low"
    low.mkdir()
    (low / f".{md5('ok-s1')}.jpg.part").write_bytes(b"left by a killed run")
    (low / f"{md5('ok-s2')}.jpg").write_bytes(image_bytes("ok-s2")[:3000])  # cut off: not complete
    (low / f"{md5('ok-s3')}.jpg").write_bytes(image_bytes("ok-s3"))
    (low / f"{md5('ok-s4')}.jpg").write_bytes(image_bytes("ok-s4"))
    (low / f".{md5('ok-s4')}.jpg.part").write_bytes(image_bytes("ok-s4")[:100])  # stale beside a complete file
    result = invoke(args(root, server.url))
    assert result.exit_code == 0, result.output
    assert dict(server.hits) == {"ok-s1": 1, "ok-s2": 1, "ok-s5": 1}
    served(root, all_names(spec))
    assert not list(root.rglob("*.part"))


SLOW_SPEC = {"train": [f"ok-k{i}" for i in range(8)], "val": [f"ok-k{i}" for i in range(8, 12)],
             "test": [f"ok-k{i}" for i in range(12, 16)]}


@pytest.mark.slow
def test_a_killed_download_leaves_no_partial_file_and_resumes(tmp_path):
    srv = Server(chunk_delay=0.02)  # ~10 chunks per image: each takes ~0.2 s
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        root = tmp_path / "root"
        write_annotations(root / "annotations", SLOW_SPEC)
        proc = bench_subprocess([*args(root, srv.url), "--workers", "2"], tmp_path, tmp_path / "client.log")
        try:
            wait_for(lambda: len(srv.done) >= 3 or proc.poll() is not None, "three images served")
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        assert proc.returncode == -signal.SIGKILL, (tmp_path / "client.log").read_text()
        by_file = {f"{md5(n)}.jpg": n for n in all_names(SLOW_SPEC)}
        finals = [p for p in (root / "low").iterdir() if not p.name.startswith(".")]
        assert len(finals) < 16  # killed mid-download ...
        for path in finals:  # ... and what has its final name is complete
            assert path.read_bytes() == image_bytes(by_file[path.name])

        srv.chunk_delay = 0.0
        result = invoke(args(root, srv.url))
        assert result.exit_code == 0, result.output
        served(root, all_names(SLOW_SPEC))
        assert not list(root.rglob("*.part"))
        assert all(srv.hits[by_file[p.name]] == 1 for p in finals)  # complete files were not fetched again
        assert "manifest sha256" in result.output and report(root)["failed"] == []
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join()


@pytest.mark.slow
def test_the_server_killed_and_restarted_mid_download(tmp_path):
    port_file, done = tmp_path / "port", tmp_path / "done.log"
    done.touch()

    def start(port: int) -> tuple[subprocess.Popen, int]:
        port_file.unlink(missing_ok=True)
        proc = subprocess.Popen([sys.executable, "-m", "tests.datasets.test_download", "serve", "--port", str(port), "--port-file", str(port_file),
                                 "--chunk-delay", "0.02", "--done-log", str(done)], cwd=REPO)
        wait_for(lambda: port_file.is_file() or proc.poll() is not None, "the server")
        return proc, int(port_file.read_text())

    def served_count() -> int:
        return len(done.read_text().split())

    server, port = start(0)
    root = tmp_path / "root"
    write_annotations(root / "annotations", SLOW_SPEC)
    client = None
    try:
        client = bench_subprocess([*args(root, f"http://127.0.0.1:{port}"), "--workers", "2", "--retries", "10",
                                   "--backoff", "0.1"], tmp_path, tmp_path / "client.log")
        wait_for(lambda: served_count() >= 3 or client.poll() is not None, "three images served")
        server.kill()
        server.wait()
        before = served_count()
        server, _ = start(port)  # the same port: the client's retries reach it
        assert client.wait(timeout=60) == 0, (tmp_path / "client.log").read_text()
    finally:
        if client is not None and client.poll() is None:
            client.kill()
            client.wait()
        server.kill()
        server.wait()
    assert before < 16 and served_count() > before  # the restarted server served the rest
    served(root, all_names(SLOW_SPEC))
    assert not list(root.rglob("*.part")) and report(root)["failed"] == []


# --------------------------------------------------------------------------------------------------------------
# Hostile servers and annotation files
# --------------------------------------------------------------------------------------------------------------


def tree(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` (links not followed) with a file's bytes (None: a folder or link)."""
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() and not p.is_symlink() else None
            for p in sorted(folder.rglob("*"))}


def only_images_written(tmp_path: Path, before: dict[str, bytes | None], images: list[str]) -> None:
    """Since ``before``, nothing but ``images`` (under root/low) and root/download-report.json appeared or changed
    under ``tmp_path``, and no ``.part`` is left."""
    after = tree(tmp_path)
    changed = {k for k in after if k not in before or after[k] != before[k]}
    changed = {k for k in changed if k.split("/")[0] not in ("cache", "client.log")}  # verify's cache, the log
    expected = {"root/download-report.json"} | {f"root/low/{md5(n)}.jpg" for n in images}
    assert changed <= expected | {"root/low"}, sorted(changed - expected)
    assert set(before) <= set(after)  # nothing removed
    assert not [k for k in after if k.endswith(".part")]


def failures(root: Path) -> dict[str, tuple[int | None, str, int]]:
    """The report's failed images: id -> (status, reason, attempts)."""
    return {f["id"]: (f["status"], f["reason"], f["attempts"]) for f in report(root)["failed"]}


SIZE_SPEC = {"train": ["ok-z1"], "val": ["big-z2", "bignl-z3", "lie-z4", "fit-z5"], "test": ["ok-z6"]}


def test_oversized_bodies_fail_at_once_and_leave_nothing(server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "root"
    write_annotations(root / "annotations", SIZE_SPEC)
    before = tree(tmp_path)
    result = invoke(args(root, server.url, "--max-bytes", "1000000"))  # server.big: 2 MB, server.fit: 1 MB exactly
    assert result.exit_code == 1, result.output
    failed = failures(root)
    assert set(failed) == {md5("big-z2"), md5("bignl-z3"), md5("lie-z4")}
    assert failed[md5("big-z2")] == (200, "too large: Content-Length 2,000,000 bytes is over the limit of 1,000,000 "
                                          "bytes (--max-bytes)", 1)
    for name in ("bignl-z3", "lie-z4"):  # no Content-Length, or one that the chunked body ignores
        assert failed[md5(name)] == (200, "too large: the body is over the limit of 1,000,000 bytes (--max-bytes)", 1)
    assert all(server.hits[n] == 1 for n in ("big-z2", "bignl-z3", "lie-z4"))  # not retried
    assert (root / "low" / f"{md5('fit-z5')}.jpg").read_bytes() == padded("fit-z5", 1_000_000)  # the limit itself: fine
    served(root, ["ok-z1", "ok-z6"])
    only_images_written(tmp_path, before, ["ok-z1", "ok-z6", "fit-z5"])
    assert "too large" in result.output


def _rss_watch(proc: subprocess.Popen, limit_kb: int, seconds: float, peak: dict | None = None) -> threading.Thread:
    """Kill ``proc`` once its RSS passes ``limit_kb`` or after ``seconds`` (the old code streamed forever); the
    largest RSS seen goes to ``peak["kb"]``."""

    def watch() -> None:
        deadline = time.monotonic() + seconds
        while proc.returncode is None and time.monotonic() < deadline:
            try:
                rss = int(next(ln for ln in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                               if ln.startswith("VmRSS:")).split()[1])
            except (OSError, StopIteration, ValueError):
                return
            if peak is not None:
                peak["kb"] = max(peak.get("kb", 0), rss)
            if rss > limit_kb:
                break
            time.sleep(0.05)
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except OSError:
            pass

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_an_endless_body_is_cut_at_the_default_limit(server, tmp_path):
    root = tmp_path / "root"
    spec = {"train": ["ok-e1"], "val": ["endless-e2", "ok-e3"], "test": ["ok-e4"]}
    write_annotations(root / "annotations", spec)
    before = tree(tmp_path)
    proc = bench_subprocess([*args(root, server.url), "--no-verify"], tmp_path, tmp_path / "client.log")
    peak: dict = {}
    watcher = _rss_watch(proc, limit_kb=1 << 20, seconds=90, peak=peak)
    proc.wait()
    watcher.join()
    log = (tmp_path / "client.log").read_text()
    assert proc.returncode == 1, log  # a val image is lost, nothing else went wrong (the old code: killed at 1 GB)
    # the whole `bench data download` process (sampled every 50 ms): its config check imports no method (no torch)
    assert 0 < peak["kb"] < 300 * 1024, peak
    assert server.hits["endless-e2"] == 1  # failed at once, not retried
    assert failures(root) == {md5("endless-e2"): (200, "too large: the body is over the limit of 50,000,000 bytes "
                                                       "(--max-bytes)", 1)}
    only_images_written(tmp_path, before, ["ok-e1", "ok-e3", "ok-e4"])


ENDLESS_CLIENT = """
import json, sys
from pathlib import Path
from bench.datasets.download import Item, Options, download_all
root, base = Path(sys.argv[1]), sys.argv[2]
items = [Item("val", n, f"{base}/photo-{n}?q=30", f"low/{n}.jpg") for n in sys.argv[3:]]
outcomes = download_all(root, items, Options(workers=len(items), rate=0, timeout=5, retries=3, backoff=0.05))
peak_kb = next(int(ln.split()[1]) for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith("VmHWM:"))
print(json.dumps({"peak_kb": peak_kb, "outcomes": [[o.item.id, o.state, o.reason, o.attempts] for o in outcomes]}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_memory_stays_bounded_while_four_workers_read_endless_bodies(server, tmp_path):
    """The download itself (bench.datasets.download; the CLI's own peak is checked above): 4 workers on 4 endless
    bodies at the default 50 MB limit peak far below 300 MB of RSS and give up at once. The peak is the child's
    VmHWM (its own, from exec on: wait4's ru_maxrss would count the forking pytest's pages)."""
    names = [f"endless-m{i}" for i in range(4)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", ENDLESS_CLIENT, str(tmp_path / "root"), server.url, *names],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    watcher = _rss_watch(proc, limit_kb=1 << 20, seconds=90)
    output = proc.stdout.read().decode()
    proc.wait()
    watcher.join()
    assert proc.returncode == 0, output  # the old code: killed at 1 GB
    result = json.loads(output.splitlines()[-1])
    print(f"peak RSS of 4 workers against 4 endless bodies: {result['peak_kb'] / 1024:.0f} MB")
    assert result["peak_kb"] < 300 * 1024, result["peak_kb"]
    limit = "too large: the body is over the limit of 50,000,000 bytes (--max-bytes)"
    assert result["outcomes"] == [[n, "failed", limit, 1] for n in names]
    assert {n: server.hits[n] for n in names} == {n: 1 for n in names}  # not retried
    assert not list((tmp_path / "root").rglob("*.*"))  # no .part, no image


def test_redirects_stay_on_the_origin_unless_allowed(server, tmp_path, monkeypatch):
    other = Server()  # another port: another origin
    thread = threading.Thread(target=other.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.chdir(tmp_path)
        server.redirect_to = other.url
        root = tmp_path / "root"
        spec = {"train": ["ok-o1"], "val": ["redir-ok-o2", "sredir-ok-o3"], "test": ["ok-o4"]}
        write_annotations(root / "annotations", spec)
        before = tree(tmp_path)
        result = invoke(args(root, server.url))
        assert result.exit_code == 1, result.output
        reason = (f"redirect to {other.url}/photo-ok-o2?ixid=eyJhcHBfaWQiOi0xM30=&q=30 refused: off the origin "
                  f"{server.url}:{server.server_address[1]}".replace(f"{server.url}:", "http://127.0.0.1:"))
        assert failures(root) == {md5("redir-ok-o2"): (302, f"{reason} (--allow-redirects-off-origin follows it)", 1)}
        assert sum(other.hits.values()) == 0 and server.hits["redir-ok-o2"] == 1
        assert (root / "low" / f"{md5('sredir-ok-o3')}.jpg").read_bytes() == image_bytes("ok-o3")  # same origin: followed
        only_images_written(tmp_path, before, ["ok-o1", "sredir-ok-o3", "ok-o4"])

        result = invoke(args(root, server.url, "--allow-redirects-off-origin"))
        assert result.exit_code == 0, result.output
        assert dict(other.hits) == {"ok-o2": 1} and failures(root) == {}
        assert (root / "low" / f"{md5('redir-ok-o2')}.jpg").read_bytes() == image_bytes("ok-o2")
    finally:
        other.shutdown()
        other.server_close()
        thread.join()


HOSTILE = {
    "annotation file": ("annotations/intentonomy_val2020.json", "it is the annotation folder"),
    "report": ("download-report.json", "it is the download report"),
    "parent": ("../x.jpg", "it goes up a folder ('..')"),
    "absolute": ("{tmp}/x.jpg", "it is an absolute path"),
    "folder": ("low", "it names an existing folder"),
    "link": ("pics/x.jpg", "it leads out of the image folder"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_filenames_are_refused_up_front(server, tmp_path, monkeypatch, case):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "root"
    filename, why = HOSTILE[case]
    filename = filename.format(tmp=tmp_path)
    spec = {"train": ["ok-h1"], "val": ["ok-h2", "ok-h3"], "test": ["ok-h4"]}
    write_annotations(root / "annotations", spec, {"ok-h3": filename})
    (root / "low").mkdir()
    (root / "low" / f"{md5('ok-h1')}.jpg").write_bytes(image_bytes("ok-h1"))
    (tmp_path / "outside").mkdir()
    (root / "pics").symlink_to(tmp_path / "outside")
    before = tree(tmp_path)
    result = invoke(args(root, server.url))
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception  # no traceback
    assert sum(server.hits.values()) == 0  # nothing fetched at all
    (status, reason, attempts), = failures(root).values()
    assert report(root)["failed"][0]["id"] == md5("ok-h3") and status is None and attempts == 0
    assert reason.startswith(f"refused destination: {why}"), reason
    text = " ".join(result.output.split())
    assert f"refused val {md5('ok-h3')}: filename '{filename}': {why}" in text
    assert "1 annotation entries name a destination where no image may be written" in text
    only_images_written(tmp_path, before, [])
    assert not (tmp_path / "x.jpg").exists() and not list((tmp_path / "outside").iterdir())

    result = invoke([*args(root, server.url), "--dry-run"])  # the dry run refuses too, and writes nothing
    assert result.exit_code == 2 and f"refused val {md5('ok-h3')}" in " ".join(result.output.split())


# --------------------------------------------------------------------------------------------------------------
# The official annotation files
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not (SHARED / "intentonomy_test2020.json").is_file(), reason=f"no real annotations in {SHARED}")
def test_the_official_annotation_files(server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "root"
    base = ["data", "download", "-d", "intentonomy", "--root", str(root), "--base-url", server.url, "--no-progress"]
    result = invoke([*base, "--annotations", str(SHARED), "--split", "val,test", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert sum(server.hits.values()) == 0 and not root.exists()
    for split, row in {"val": "498 0 498 0", "test": "1,217 0 1,217 0"}.items():
        assert any(line.replace("│", " ").split() == [split, *row.split()] for line in result.output.splitlines()), result.output
    first = json.loads((SHARED / "intentonomy_val2020.json").read_text())["images"][0]
    assert first["unsplash_url"].replace("https://images.unsplash.com", server.url) in result.output

    ann = tmp_path / "official"  # the first 4 images of the real val and test files, a generated train file
    write_annotations(ann, {"train": ["ok-r1", "ok-r2", "ok-r3"]})
    urls = {}
    for split in ("val", "test"):
        data = json.loads((SHARED / f"intentonomy_{split}2020.json").read_text())
        data["images"] = data["images"][:4]
        keep = {img["id"] for img in data["images"]}
        data["annotations"] = [a for a in data["annotations"] if a["image_id"] in keep]
        (ann / f"intentonomy_{split}2020.json").write_text(json.dumps(data))
        urls |= {img["filename"]: urllib.parse.urlsplit(img["unsplash_url"]).path.removeprefix("/photo-") for img in data["images"]}
    result = invoke([*base, "--annotations", str(ann), "--set", f"paths.cache={tmp_path / 'cache'}"])
    assert result.exit_code == 0, result.output
    for filename, name in urls.items():
        assert (root / filename).read_bytes() == image_bytes(name)
    served(root, ["ok-r1", "ok-r2", "ok-r3"])
    assert sum(server.hits.values()) == 11 and "manifest sha256" in result.output
    manifests = list((tmp_path / "cache" / "datasets" / "intentonomy").glob("manifest-*.json"))
    counts = json.loads(manifests[0].read_text())["counts"]
    assert {s: (c["images"], c["ok"]) for s, c in counts.items()} == {"train": (3, 3), "val": (4, 4), "test": (4, 4)}


if __name__ == "__main__":  # the restart test's server: `python -m tests.datasets.test_download serve --port-file F ...`
    cli = argparse.ArgumentParser()
    cli.add_argument("command", choices=["serve"])
    cli.add_argument("--port", type=int, default=0)
    cli.add_argument("--port-file", type=Path, required=True)
    cli.add_argument("--chunk-delay", type=float, default=0.0)
    cli.add_argument("--done-log", type=Path, required=True)
    opts = cli.parse_args()
    server = Server(opts.port, opts.chunk_delay, opts.done_log)
    tmp = opts.port_file.with_suffix(".tmp")
    tmp.write_text(str(server.server_address[1]))
    os.replace(tmp, opts.port_file)
    server.serve_forever()


def test_a_trickling_body_fails_at_the_deadline_without_a_retry(server, tmp_path):
    """A server that sends one byte inside every read timeout: the image fails once its body takes longer than
    --deadline, at once and without a retry (it held a worker for as long as the server liked)."""
    root = tmp_path / "root"
    write_annotations(root / "annotations", {"train": ["ok-d1"], "val": ["drip-d2"], "test": ["ok-d3"]})
    before = tree(tmp_path)
    t0 = time.monotonic()
    result = invoke(args(root, server.url, "--deadline", "1", "--no-verify"))
    assert result.exit_code == 1, result.output  # a val image is lost
    assert time.monotonic() - t0 < 30 and server.hits["drip-d2"] == 1
    (status, reason, attempts), = failures(root).values()
    assert reason.startswith("too slow:") and "(--deadline)" in reason and attempts == 1
    only_images_written(tmp_path, before, ["ok-d1", "ok-d3"])
