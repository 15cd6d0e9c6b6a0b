"""``bench data download``: what to fetch for a dataset (Intentonomy: every json entry's ``unsplash_url`` to
``ROOT/<its filename>``), the dry run, the progress bar and the summary; the fetching is :mod:`bench.datasets.download`.

The annotation files come from ``ROOT/annotations`` (or ``ROOT``), or from ``--annotations`` (folders or the json
files themselves); files taken from elsewhere are copied into ``ROOT/annotations`` so that ``bench data verify``
(run after the download) reads the same ones.

Every destination is checked before anything is fetched (:func:`refusals`): it must stay inside the image folder
(``ROOT/<images_dir>``; no ``..``, no absolute path, no link leading out), end in an image suffix, and be neither
an annotation, report or cache file nor a folder. One entry that fails this refuses the whole download (exit 2):
the entries and why are printed and written to ``download-report.json``.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

from rich import filesize
from rich.console import Console
from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn, TransferSpeedColumn)
from rich.table import Table
from rich.text import Text

from bench.datasets.download import REPORT, Item, Options, Outcome, counts, download_all, rewrite_url, scan, write_report
from bench.errors import BenchError
from bench.io import atomic_write_bytes
from bench.reports.escape import rich_text

EXAMPLE_URLS = 3
SHOWN_FAILURES = 10
OFFLINE_AFTER = 20  # this many failures without an answer from the first requests: say the machine may be offline


@dataclass
class Plan:
    root: Path
    items: list[Item]
    listed: dict[str, int]  # images per requested split
    annotations: dict[str, Path]  # split -> the json file read
    to_install: dict[str, Path] = field(default_factory=dict)  # split -> file to copy into ROOT/annotations
    missing_url: list[Item] = field(default_factory=list)  # entries without an url (reported as failed)
    refused: list[tuple[Item, str]] = field(default_factory=list)  # entries whose destination is refused, and why


@dataclass
class Result:
    plan: Plan
    outcomes: list[Outcome]
    report: Path | None

    def failed(self, split: str) -> int:
        return sum(o.state == "failed" and o.item.split == split for o in self.outcomes)

    @property
    def lost_eval(self) -> bool:
        """A val or test image could not be fetched: runs on this root cannot be scored as the paper's."""
        return any(self.failed(s) for s in self.plan.listed if s != "train")


# --------------------------------------------------------------------------------------------------------------
# Intentonomy: the annotation files and their urls
# --------------------------------------------------------------------------------------------------------------


def _annotation_files(adapter, root: Path, sources: list[Path], splits: list[str]) -> dict[str, Path]:
    """Split -> json file: from ``sources`` (folders, or files named ``intentonomy_<split>2020.json``), else from
    the root as the adapter finds them."""
    from bench.datasets.intentonomy import ANNOTATION

    found: dict[str, Path] = {}
    for src in sources:
        src = src.expanduser()
        if src.is_dir():
            for split in splits:
                for candidate in (src / ANNOTATION.format(split=split), src / "annotations" / ANNOTATION.format(split=split)):
                    if candidate.is_file():
                        found.setdefault(split, candidate)
        elif src.is_file():
            match = re.fullmatch(ANNOTATION.format(split="(train|val|test)").replace(".", r"\."), src.name)
            if not match:
                raise BenchError(f"--annotations {src}: cannot tell its split from the name (expected {ANNOTATION})")
            found[match.group(1)] = src
        else:
            raise BenchError(f"--annotations {src}: no such file or folder")
    for split in splits:
        if split not in found and root.is_dir():
            path = adapter._find(root, ANNOTATION.format(split=split))
            if path is not None:
                found[split] = path
    absent = [ANNOTATION.format(split=s) for s in splits if s not in found]
    if absent:
        where = ", ".join(str(s) for s in sources) + " and " if sources else ""
        raise adapter.not_found(f"no {', '.join(absent)} in {where}{root / 'annotations'} or {root}")
    return {s: found[s] for s in splits}


def _installs(root: Path, files: dict[str, Path]) -> dict[str, Path]:
    """The files that are not yet in ``ROOT/annotations`` or ``ROOT`` (a different file of the same name there is an
    error: bench never overwrites annotation files)."""
    out = {}
    for split, path in files.items():
        homes = [root / "annotations" / path.name, root / path.name]
        if any(h.is_file() and h.resolve() == path.resolve() for h in homes):
            continue
        home = next((h for h in homes if h.is_file()), None)
        if home is None:
            out[split] = path
        elif home.read_bytes() != path.read_bytes():
            raise BenchError(f"{home} differs from {path}: remove one, or drop --annotations to use the root's file")
    return out


def _why_refused(name: object, folder: Path, protected: dict[Path, str]) -> str | None:
    """Why ``folder/name`` may not be written (None: it may). ``folder`` and ``protected``'s paths are resolved."""
    from bench.datasets.emotion import IMAGE_SUFFIXES

    if not isinstance(name, str) or not name.strip() or "\x00" in name or "\\" in name:
        return "the filename is empty, not a string, or holds a backslash or NUL"
    path = PurePosixPath(name)
    if path.is_absolute() or re.match(r"[A-Za-z]:", name):
        return "it is an absolute path"
    if ".." in path.parts:
        return "it goes up a folder ('..')"
    try:
        resolved = (folder / path).resolve()
    except (OSError, RuntimeError) as err:  # a link loop
        return f"it cannot be resolved: {err}"
    if resolved == folder or not resolved.is_relative_to(folder):
        return f"it leads out of the image folder {folder} (through a link)"
    for other, what in protected.items():
        if resolved == other or resolved.is_relative_to(other):
            return f"it is {what} ({other})"
    if resolved.is_dir():
        return "it names an existing folder"
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return f"it is not an image file name (expected {', '.join(IMAGE_SUFFIXES)})"
    return None


def _protected(root: Path, folder: Path, files: dict[str, Path], more: list[Path]) -> dict[Path, str]:
    """What a download may never write to: the annotation folder and files, the report, the cache folder (unless
    the image folder is inside it)."""
    out = {(root / "annotations").resolve(): "the annotation folder", (root / REPORT).resolve(): "the download report"}
    out |= {p.resolve(): "an annotation file" for p in files.values()}
    more = [Path(p).resolve() for p in more]
    return out | {p: "the cache folder" for p in more if not folder.resolve().is_relative_to(p)}


def refusals(folder: Path, entries: list[tuple[Item, object]], protected: dict[Path, str]) -> list[tuple[Item, str]]:
    """The entries (item, filename as listed) whose destination under ``folder`` is refused, and why; an image
    whose path is the folder of another's is refused too."""
    folder = folder.resolve()
    out, fine = [], {}
    for item, name in entries:
        reason = _why_refused(name, folder, protected)
        if reason is None:
            fine[(folder / str(name)).resolve()] = item
        else:
            out.append((item, reason))
    parents = {parent for dest in fine for parent in dest.parents}
    return out + [(item, "it is the folder of another entry's image") for dest, item in fine.items() if dest in parents]


def _raw_entries(path: Path, split: str, prefix: str, base_url: str | None) -> list[tuple[Item, object]]:
    """Every ``images`` entry of ``path`` as (item, filename as listed), before any check (a file that cannot be
    read gives none: :func:`parse_annotations` says what is wrong with it)."""
    try:
        images = json.loads(path.read_text(encoding="utf-8")).get("images")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return []
    out = []
    for img in images if isinstance(images, list) else []:
        if isinstance(img, dict) and "id" in img and "filename" in img:
            url = img.get("unsplash_url")
            item = Item(split, str(img["id"]), rewrite_url(str(url), base_url) if url else "", prefix + str(img["filename"]))
            out.append((item, img["filename"]))
    return out


def plan_intentonomy(adapter, root: Path, splits: list[str], sources: list[Path], base_url: str | None,
                     protect: list[Path] | None = None) -> Plan:
    """Every image of ``splits`` as an :class:`Item` (url rewritten onto ``base_url``), in json order; when a
    destination is refused, no item but the refused entries (:attr:`Plan.refused`)."""
    from bench.datasets.images import check_relative
    from bench.datasets.intentonomy import parse_annotations

    files = _annotation_files(adapter, root, sources, splits)
    images_dir = adapter.config.images_dir.strip("/")
    prefix = check_relative(images_dir, "datasets.intentonomy.images_dir") + "/" if images_dir else ""
    raw = {split: _raw_entries(path, split, prefix, base_url) for split, path in files.items()}
    folder = root / images_dir
    refused = refusals(folder, [e for entries in raw.values() for e in entries], _protected(root, folder, files, protect or []))
    if refused:
        return Plan(root, [], {s: len(entries) for s, entries in raw.items()}, files, refused=refused)
    keys = adapter.class_keys()
    items, missing, listed, seen = [], [], {}, {}
    for split, path in files.items():
        entries, _ = parse_annotations(path, split, keys, adapter.config.train_label_threshold)  # validates the file
        by_id = {item.id: item for item, _ in raw[split]}
        listed[split] = len(entries)
        for image_id, filename in entries:
            item = replace(by_id[image_id], path=prefix + filename)
            if item.path in seen:
                raise BenchError(f"{path}: {item.path} is listed twice ({seen[item.path]} and {split}/{image_id})")
            seen[item.path] = f"{split}/{image_id}"
            (items if item.url else missing).append(item)
    return Plan(root, items, listed, files, _installs(root, files), missing)


def make_plan(adapter, root: Path, splits: list[str], sources: list[Path], base_url: str | None,
              protect: list[Path] | None = None) -> Plan:
    """What to fetch; ``protect``: more folders that no destination may be in (the cache)."""
    if adapter.name != "intentonomy":
        raise BenchError(f"no downloader for {adapter.name!r}: only intentonomy lists an url per image "
                         "(EmotionROI and FI are distributed as archives by their authors)")
    return plan_intentonomy(adapter, root, splits, sources, base_url, protect)


# --------------------------------------------------------------------------------------------------------------
# Running it
# --------------------------------------------------------------------------------------------------------------


class _PerUnit(ProgressColumn):
    """One column that renders the images row with ``images`` and the bytes row with ``data``."""

    def __init__(self, images: ProgressColumn, data: ProgressColumn) -> None:
        super().__init__()
        self.images, self.data = images, data

    def render(self, task: Task):
        return (self.data if task.fields.get("unit") == "bytes" else self.images).render(task)


class _ImagesPerSecond(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("?" if speed is None else f"{speed:.1f} img/s", style="progress.data.speed")


def _progress(console: Console, show: bool) -> Progress:
    columns = (TextColumn("{task.description}"), BarColumn(), _PerUnit(MofNCompleteColumn(), DownloadColumn()),
               _PerUnit(_ImagesPerSecond(), TransferSpeedColumn()), TimeElapsedColumn(),
               _PerUnit(TimeRemainingColumn(), TextColumn("")))
    return Progress(*columns, console=console, disable=not show, transient=False)


def execute(plan: Plan, dataset: str, opts: Options, base_url: str | None, err: Console, show: bool) -> Result:
    """Install the annotation files, skip the complete images, fetch the rest, write the report."""
    plan.root.mkdir(parents=True, exist_ok=True)
    for path in plan.to_install.values():
        atomic_write_bytes(plan.root / "annotations" / path.name, path.read_bytes())
    present, todo = scan(plan.root, plan.items, opts.workers)
    missing = [Outcome(it, "failed", None, "no unsplash_url in the annotation file") for it in plan.missing_url]
    err.print(f"{dataset}: {len(present):,} of {len(plan.items):,} images already complete under "
              f"{rich_text(plan.root)}, {len(todo):,} to fetch", highlight=False)
    finished: list[Outcome] = []
    with _progress(err, show) as bar:
        images = bar.add_task(f"download {dataset}", total=len(todo), unit="images")
        data = bar.add_task("received", total=None, unit="bytes")

        step, t0 = max(1, len(todo) // 20), time.monotonic()

        def done(o: Outcome) -> None:  # without the bar (logs): the first failures, and a line per 5 %
            finished.append(o)
            bar.advance(images)
            failures = sum(f.state == "failed" for f in finished)
            if o.state == "failed" and failures == OFFLINE_AFTER and len(finished) == OFFLINE_AFTER and all(
                    f.status is None for f in finished):
                err.print(f"[red]the first {OFFLINE_AFTER} requests all failed without an answer from the server: is this "
                          "machine offline (no network, a proxy or DNS that blocks the image host)? The download goes "
                          "on; stop it with Ctrl-C and rerun once online (what is complete is kept)[/]", highlight=False)
            if show:
                return
            if o.state == "failed" and failures <= SHOWN_FAILURES:
                colour = "yellow" if o.item.split == "train" else "red"
                more = f" (further failures are counted, not listed: see {REPORT})" if failures == SHOWN_FAILURES else ""
                err.print(f"[{colour}]{o.item.split} {rich_text(o.item.id)}: {o.status or 'no answer'}: "
                          f"{rich_text(o.reason)}{more}[/]", highlight=False)
            n, received = int(bar.tasks[images].completed), int(bar.tasks[data].completed)
            if n % step == 0 or n == len(todo):
                seconds = max(time.monotonic() - t0, 1e-9)
                err.print(f"download {dataset}: {n:,}/{len(todo):,} images, {filesize.decimal(received)}, "
                          f"{n / seconds:.1f} img/s, {filesize.decimal(int(received / seconds))}/s", highlight=False)

        try:
            fetched = download_all(plan.root, todo, opts, on_bytes=lambda n: bar.advance(data, n), on_done=done)
        except BaseException:  # interrupted, or a file that cannot be written: the report says what was done
            ended = {o.item for o in finished}
            left = [Outcome(it, "failed", None, "not fetched: the download stopped") for it in todo if it not in ended]
            _report(plan, dataset, present + finished + left + missing, base_url, opts)
            raise
    outcomes = present + fetched + missing
    return Result(plan, outcomes, _report(plan, dataset, outcomes, base_url, opts))


def _report(plan: Plan, dataset: str, outcomes: list[Outcome], base_url: str | None, opts: Options) -> Path:
    try:
        plan.root.mkdir(parents=True, exist_ok=True)
        return write_report(plan.root, dataset, plan.listed, outcomes, base_url, opts)
    except OSError as e:
        raise BenchError(f"cannot write {plan.root / REPORT}: {e}") from None


def refuse(plan: Plan, dataset: str, opts: Options, base_url: str | None, err: Console, write: bool) -> Path | None:
    """Print the refused entries and why, and (unless ``write`` is false: a dry run) list them in the report;
    nothing is fetched, the command exits 2."""
    for item, why in plan.refused[:SHOWN_FAILURES]:
        err.print(f"[red]refused {item.split} {rich_text(item.id)}: filename {rich_text(repr(item.path))}: "
                  f"{rich_text(why)}[/]", highlight=False, soft_wrap=True)
    more = f" (the first {SHOWN_FAILURES} shown)" if len(plan.refused) > SHOWN_FAILURES else ""
    report = None
    if write:
        outcomes = [Outcome(item, "failed", None, f"refused destination: {why}") for item, why in plan.refused]
        report = _report(plan, dataset, outcomes, base_url, opts)
    where = f", listed in {rich_text(report)}" if report else ""
    err.print(f"[bold red]error:[/] {len(plan.refused):,} annotation entries{more} name a destination where no image "
              f"may be written{where}; nothing was downloaded", highlight=False, soft_wrap=True)
    return report


# --------------------------------------------------------------------------------------------------------------
# What the command prints
# --------------------------------------------------------------------------------------------------------------


def print_dry_run(plan: Plan, opts: Options, out: Console) -> None:
    """Counts per split (listed, already complete, to fetch), a few urls, the target folder; nothing is written."""
    present, todo = scan(plan.root, plan.items, opts.workers) if plan.root.is_dir() else ([], plan.items)
    table = Table(title=f"dry run: nothing is downloaded (target {rich_text(plan.root)})")
    for col in ("split", "images", "present", "to fetch", "no url"):
        table.add_column(col, justify="left" if col == "split" else "right")
    c = counts(plan.listed, present)
    for split in plan.listed:
        fetch = sum(it.split == split for it in todo)
        no_url = sum(it.split == split for it in plan.missing_url)
        table.add_row(split, f"{plan.listed[split]:,}", f"{c[split]['present']:,}", f"{fetch:,}", f"{no_url:,}")
    out.print(table)
    for it in todo[:EXAMPLE_URLS]:
        out.print(f"  {rich_text(it.url)} -> {rich_text((plan.root / it.path))}", highlight=False, soft_wrap=True)
    for path in plan.to_install.values():
        out.print(f"would copy {rich_text((path))} to {rich_text((plan.root / 'annotations' / path.name))}",
                  highlight=False, soft_wrap=True)
    rate = f"{opts.rate:g} requests/s (at least {len(todo) / opts.rate / 60:,.1f} min)" if opts.rate > 0 else "no rate limit"
    out.print(f"would fetch {len(todo):,} images into {rich_text((plan.root))} with {opts.workers} workers, {rate}",
              highlight=False, soft_wrap=True)


def print_summary(result: Result, out: Console, err: Console) -> None:
    """Per split: listed, present, downloaded, failed (val/test losses in red), then the failures and what they mean."""
    c = counts(result.plan.listed, result.outcomes)
    table = Table(title=f"download: {rich_text(result.plan.root)}")
    for col in ("split", "images", "present", "downloaded", "failed"):
        table.add_column(col, justify="left" if col == "split" else "right")
    for split, row in c.items():
        style = "red" if split != "train" and row["failed"] else None
        table.add_row(split, *(f"{row[k]:,}" for k in ("images", "present", "downloaded", "failed")), style=style)
    out.print(table)
    out.print(f"report: {rich_text(result.report)}", highlight=False)
    for split in c:
        failed = [o for o in result.outcomes if o.state == "failed" and o.item.split == split]
        if not failed:
            continue
        colour = "yellow" if split == "train" else "red"
        shown = "; ".join(f"{o.item.id} ({o.status or 'no answer'}: {o.reason})" for o in failed[:SHOWN_FAILURES])
        more = f" and {len(failed) - SHOWN_FAILURES} more" if len(failed) > SHOWN_FAILURES else ""
        err.print(f"[{colour}]{split}: {len(failed):,} images could not be fetched: {rich_text(shown)}{more}[/]", highlight=False)
    failed = [o for o in result.outcomes if o.state == "failed"]
    if failed and len(failed) == len(result.outcomes) and all(o.status is None for o in failed):
        err.print("[bold red]every request failed without an answer from the server: this machine looks offline (or a "
                  "proxy, firewall or DNS blocks the image host); rerun once online, complete images are kept[/]",
                  highlight=False)
    if result.lost_eval:
        lost = ", ".join(f"{result.failed(s):,} {s}" for s in c if s != "train" and result.failed(s))
        err.print(f"[bold red]{lost} images could not be fetched (listed in {REPORT}): runs on this root fail until "
                  "they are restored; scores on a reduced val/test split are not comparable with the paper's (its "
                  "manifest hash differs, so bench never mixes them with complete roots)[/]", highlight=False)
