"""``bench data verify|prepare|download|import``: check a dataset's files, build its decoded-image cache, fetch its
images, unpack a published archive.

Mounted into the main CLI with ``app.add_typer(data_app, name="data")``. Both commands take the dataset's root
from ``--root`` (alias ``--data-root``), else from ``[paths.data] <name>`` in bench.toml.

Exit codes: 0 fine (train images may have been skipped: counted and shown); 1 a val or test image is missing or
corrupt (or could not be downloaded); 2 any other error (no data root, malformed annotation file, bad config),
printed as one message.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Iterator, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from bench.cli.common import ConfigOpt, SetOpt, err, out
from bench.config import BenchConfig, load_config
from bench.overrides import command_overrides
from bench.errors import BenchError

data_app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Verify dataset files (manifest) and build the decoded-image cache.",
)

DatasetOpt = Annotated[str, typer.Option("--dataset", "-d", help="Dataset name, e.g. intentonomy, emotionroi, fi.")]
RootOpt = Annotated[
    Optional[Path], typer.Option("--root", "--data-root", help="Dataset root (overrides [paths.data] <dataset>).")
]
WorkersOpt = Annotated[
    Optional[int], typer.Option("--workers", "-j", min=1, help="Decoding threads (default: BENCH_DATA_WORKERS or all cores).")
]
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="A progress bar while decoding.")]


@contextmanager
def _errors() -> Iterator[None]:
    """BenchErrors become one red line and an exit code (1: incomplete val/test, 2: anything else)."""
    from bench.reports.escape import rich_text as escape

    from bench.datasets.images import SplitIncompleteError

    try:
        yield
    except SplitIncompleteError as e:
        err.print(f"[red]error:[/] {escape(str(e))}", highlight=False)
        raise typer.Exit(1) from None
    except BenchError as e:
        err.print(f"[red]error:[/] {escape(str(e))}", highlight=False)
        raise typer.Exit(2) from None


def _config(config: Path | None, dataset: str, root: Path | None, sets: list[str] | None) -> BenchConfig:
    from bench.registry import DATASETS

    DATASETS.check(dataset)
    values = {f"paths.data.{dataset}": str(root.expanduser().resolve())} if root is not None else None
    return load_config(config, command_overrides(sets=sets, values=values), sections=False)  # the dataset only: no method module, no torch (bounded memory)


def _adapter(cfg: BenchConfig, dataset: str, workers: int | None):
    from bench.pipeline.plan import dataset_adapter

    adapter = dataset_adapter(cfg, dataset)
    if workers is not None:
        adapter.workers = workers
    return adapter


def _progress(show: bool) -> Progress:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    return Progress(*columns, console=err, disable=not show, transient=True)


def _attach(adapter, progress: Progress, description: str) -> None:
    task = progress.add_task(description, total=None)
    adapter.progress_total = lambda n: progress.update(task, total=n, completed=0)
    adapter.progress = lambda k: progress.advance(task, k)


@data_app.command()
def verify(
    dataset: DatasetOpt,
    root: RootOpt = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    workers: WorkersOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """Decode every image (full decode + sha256), write the manifest, print per split the image, missing and
    corrupt counts. Exits 1 when any val or test image is missing or corrupt."""
    from bench.reports.escape import rich_text as escape

    from bench.datasets.images import ImageFileDataset

    with _errors():
        cfg = _config(config, dataset, root, sets)
        adapter = _adapter(cfg, dataset, workers)
        if not isinstance(adapter, ImageFileDataset):
            raise BenchError(f"dataset {dataset!r} is generated, it has no image files to verify (`bench data prepare` renders it)")
        t0 = time.perf_counter()
        with _progress(progress) as bar:
            _attach(adapter, bar, f"verify {dataset}")
            manifest, path = adapter.verify()
        seconds = time.perf_counter() - t0
    counts = manifest.counts()
    table = Table(title=f"{dataset}: {manifest.root}")
    for col in ("split", "images", "ok", "missing", "corrupt"):
        table.add_column(col, justify="left" if col == "split" else "right")
    for split, c in counts.items():
        style = "red" if split != "train" and (c["missing"] or c["corrupt"]) else None
        table.add_row(split, f"{c['images']:,}", f"{c['ok']:,}", f"{c['missing']:,}", f"{c['corrupt']:,}", style=style)
    out.print(table)
    total = sum(c["images"] for c in counts.values())
    out.print(f"manifest: {path}")
    out.print(f"manifest sha256: {manifest.sha256()}")
    out.print(f"decoded {total:,} images in {seconds:.1f} s ({total / max(seconds, 1e-9):.0f} img/s)")
    for split in counts:
        bad = manifest.bad(split)
        if bad:
            listed = ", ".join(f"{e.path} ({e.status})" for e in bad[:10])
            more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
            colour = "yellow" if split == "train" else "red"
            out.print(f"[{colour}]{split}: {escape(listed)}{more}[/]", highlight=False)
    if counts.get("train", {}).get("ok", 1) < counts.get("train", {}).get("images", 0):
        err.print("[yellow]train images that are missing or corrupt are skipped in every run (and counted in its record)[/]")
    empty = [s for s, c in counts.items() if c["ok"] == 0]
    if empty:  # a split with no usable image cannot be trained on or scored
        err.print(f"[red]{', '.join(empty)}: no usable images under {escape(str(manifest.root))} "
                  "(an empty or wrong split list, or every file missing/corrupt)[/]")
        raise typer.Exit(1)
    if any(counts[s]["missing"] or counts[s]["corrupt"] for s in counts if s != "train"):
        err.print("[red]val/test images are missing or corrupt: runs on this dataset will fail until they are restored[/]")
        raise typer.Exit(1)


@data_app.command()
def prepare(
    dataset: DatasetOpt,
    root: RootOpt = None,
    size: Annotated[Optional[int], typer.Option("--size", "-s", min=1, help="Side of the cached images (default: the backbone's input size).")] = None,
    backbone: Annotated[Optional[str], typer.Option("--backbone", "-b", help="Backbone whose input size to use (default: suite.backbone).")] = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    workers: WorkersOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """Build (or reuse) the decoded-image cache: uint8 [N, S, S, 3] per split, memory-mapped by every run."""
    from bench.datasets.images import ImageFileDataset

    with _errors():
        cfg = _config(config, dataset, root, sets)
        if size is None:
            from bench.pipeline.plan import backbone_image_size
            from bench.registry import BACKBONES

            name = backbone or cfg.suite.backbone
            BACKBONES.check(name)
            size = backbone_image_size(name)
        adapter = _adapter(cfg, dataset, workers)
        t0 = time.perf_counter()
        with _progress(progress) as bar:
            if isinstance(adapter, ImageFileDataset):
                _attach(adapter, bar, f"prepare {dataset} at {size}px")
            data = adapter.load(size)
        seconds = time.perf_counter() - t0
    info = data.info
    table = Table(title=f"{dataset} at {size}x{size}")
    for col in ("split", "images", "skipped missing", "skipped corrupt"):
        table.add_column(col, justify="left" if col == "split" else "right")
    for split, s in data.splits.items():
        skipped = info.get("skipped", {}).get(split, {})
        table.add_row(split, f"{len(s):,}", f"{skipped.get('missing', 0):,}", f"{skipped.get('corrupt', 0):,}")
    out.print(table)
    cache = info.get("cache", "")
    state = "reused" if info.get("from_cache") else "built"
    out.print(f"cache: {cache} ({state} in {seconds:.1f} s)")
    out.print(f"manifest sha256: {data.manifest_sha256}")
    if info.get("split_file"):
        out.print(f"split file: {info['split_file']} (sha256 {info['split_sha256'][:16]})")


@data_app.command()
def download(
    dataset: DatasetOpt,
    root: RootOpt = None,
    annotations: Annotated[Optional[list[Path]], typer.Option("--annotations", "-a", help="Folder or json files of the official annotations (default: ROOT/annotations); copied into ROOT/annotations.")] = None,
    split: Annotated[str, typer.Option("--split", help="Comma-separated splits to fetch.")] = "train,val,test",
    workers: Annotated[int, typer.Option("--workers", "-j", min=1, help="Concurrent downloads.")] = 16,
    rate: Annotated[float, typer.Option("--rate", min=0, help="Requests per second across all workers (0: no limit).")] = 10.0,
    timeout: Annotated[float, typer.Option("--timeout", min=0.01, help="Seconds per connect and per read.")] = 30.0,
    retries: Annotated[int, typer.Option("--retries", min=0, help="Retries per image on 429/5xx/timeouts/resets/truncation.")] = 5,
    backoff: Annotated[float, typer.Option("--backoff", min=0, help="First retry's delay ceiling in seconds (doubles per retry, jittered).")] = 1.0,
    base_url: Annotated[Optional[str], typer.Option("--base-url", envvar="BENCH_DOWNLOAD_BASE_URL", help="Fetch from a mirror: replaces each url's scheme and host, keeps path and query.")] = None,
    max_bytes: Annotated[int, typer.Option("--max-bytes", min=1, help="Largest image in bytes: a larger Content-Length or body fails that image at once.")] = 50_000_000,
    deadline: Annotated[float, typer.Option("--deadline", min=0.001, help="Seconds one image's body may take: a slower one fails that image at once (a server trickling inside every --timeout).")] = 600.0,
    off_origin: Annotated[bool, typer.Option("--allow-redirects-off-origin", help="Follow redirects to another scheme, host or port than the url's (the mirror's with --base-url).")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print what would be fetched; download nothing.")] = False,
    check: Annotated[bool, typer.Option("--verify/--no-verify", help="Run `bench data verify` afterwards (when every split was fetched).")] = True,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """Download every image listed in the annotation files (Intentonomy: each 'unsplash_url' to ROOT/<filename>),
    resumably, then verify. Images that can no longer be fetched are listed in ROOT/download-report.json; exits 1
    when a val or test image is among them."""
    from bench.datasets import download_plan as dp
    from bench.datasets.base import SPLITS
    from bench.datasets.download import Options

    with _errors():
        splits = [s.strip() for s in split.split(",") if s.strip()]
        if not splits or set(splits) - set(SPLITS) or len(set(splits)) < len(splits):
            raise BenchError(f"--split {split!r}: expected distinct names out of {', '.join(SPLITS)}")
        cfg = _config(config, dataset, root, sets)
        data_root = cfg.data_root(dataset)
        if data_root is None:
            raise BenchError(f"no data root for {dataset}: pass --root DIR or set [paths.data] {dataset} in bench.toml")
        plan = dp.make_plan(_adapter(cfg, dataset, None), Path(data_root), [s for s in SPLITS if s in splits], annotations or [], base_url,
                            protect=[cfg.paths.cache])
        opts = Options(workers=workers, rate=rate, timeout=timeout, retries=retries, backoff=backoff, max_bytes=max_bytes,
                       allow_off_origin=off_origin, deadline=deadline)
        if plan.refused:
            dp.refuse(plan, dataset, opts, base_url, err, write=not dry_run)
            raise typer.Exit(2)
        if dry_run:
            dp.print_dry_run(plan, opts, out)
            return
        result = dp.execute(plan, dataset, opts, base_url, err, progress)
    dp.print_summary(result, out, err)
    if check and set(splits) == set(SPLITS):
        verify(dataset, root=Path(data_root), config=config, sets=sets, workers=None, progress=progress)
    elif check:
        err.print(f"verify skipped (only {', '.join(splits)} fetched): run `bench data verify --dataset {dataset}` once every split is in place")
    if result.lost_eval:
        raise typer.Exit(1)


@data_app.command("import")
def import_(
    dataset: DatasetOpt,
    source: Annotated[Path, typer.Option("--from", help="The archive as obtained from the authors (.zip, .tar, .tar.gz, .tgz) or the folder it was extracted to.")],
    root: RootOpt = None,
    config: ConfigOpt = None,
    sets: SetOpt = None,
    workers: WorkersOpt = None,
    progress: ProgressOpt = True,
) -> None:
    """Unpack EmotionROI or FI as published into ROOT in the layout the adapter reads (safely; a rerun writes
    nothing, an interrupted import resumes), print the images per class and split, then verify."""
    from bench.datasets.importers import import_dataset, split_counts

    with _errors():
        cfg = _config(config, dataset, root, sets)
        data_root = cfg.data_root(dataset)
        if data_root is None:
            raise BenchError(f"no data root for {dataset}: pass --root DIR or set [paths.data] {dataset} in bench.toml")
        with _progress(progress) as bar:
            task = bar.add_task(f"import {dataset}", total=None)
            report = import_dataset(dataset, source, data_root, progress=lambda k: bar.advance(task, k),
                                    progress_total=lambda n: bar.update(task, total=n, completed=0))
        adapter = _adapter(cfg, dataset, workers)
        counts = split_counts(adapter.listing(), adapter.class_keys())
    _print_import(report, counts)
    verify(dataset, root=report.root, config=config, sets=sets, workers=workers, progress=progress)


def _print_import(report, counts: dict[str, dict[str, int]]) -> None:
    from bench.reports.escape import rich_text as escape

    wrapper = f" (wrapper folder {report.wrapper})" if report.wrapper else ""
    if report.written:
        kept = f"; {report.kept:,} already there were kept" if report.kept else ""
        line = f"imported {report.written:,} files ({report.bytes_written / 1e6:,.1f} MB) from {report.source}{wrapper} into {report.root}{kept}"
    else:
        line = f"{report.root} already holds every file of {report.source}: nothing to import"
    out.print(escape(line), soft_wrap=True, highlight=False)
    for note in report.notes:
        out.print(f"note: {escape(note)}", soft_wrap=True, highlight=False)
    splits = list(next(iter(counts.values()), {}))
    table = Table(title=f"{report.dataset}: images per class and split")
    for col in ("class", *splits, "all"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for cls, row in counts.items():
        table.add_row(cls, *(f"{row[s]:,}" for s in splits), f"{sum(row.values()):,}")
    totals = [sum(row[s] for row in counts.values()) for s in splits]
    table.add_row("all", *(f"{t:,}" for t in totals), f"{sum(totals):,}", style="bold")
    out.print(table)
