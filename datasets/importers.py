"""``bench data import``: EmotionROI or FI as the authors publish them (a zip, a tar, ``.tar.gz``/``.tgz``, or a
folder it was already extracted to) -> the layout the adapter reads (:mod:`bench.datasets.emotion`).

**Recognised layouts** (under at most two single wrapper folders such as ``EmotionROI/`` or ``emotion_dataset/``;
class folder names in any case; ``__MACOSX/``, ``._*``, ``.DS_Store`` and ``Thumbs.db`` are skipped):

* EmotionROI: ``images/<class>/<file>.jpg`` and ``training_testing_split/{training,testing}.txt`` (one
  ``<class>/<file>.jpg`` per line, the official 1,188/792 split); ``ground_truth/`` (the ROI maps) and any other
  file are ignored. Images go to ``ROOT/images/<class>/<file>``; the official lists are written as they are (only a
  list whose class names differ in case from the adapter's, or that uses ``\\`` separators, is rewritten, and the
  report says so). Every listed image must be in the archive.
* FI: ``<class>_<n>.jpg`` flat, or ``<class>/<class>_<n>.jpg``. Images go to ``ROOT/<class>/<file>`` whichever way
  they came, so every packaging gives the same paths, the same split file and the same manifest; the adapter draws
  its seeded split on first use.

**Safety.** Before anything is written every member is checked (:mod:`.archives`: the whole archive is refused
for one absolute path, ``..`` component, link leading out of it, device or fifo). Destinations are computed from
the recognised layout, never taken from member names, and each one is checked to resolve inside ROOT.

**Atomic per file, idempotent, resumable.** Each file is written into ``ROOT/.bench-import-<pid>-*/`` and renamed to
its final name once complete, so an interrupted import never leaves a half-written file under a final name (the
temp folder is removed on the way out, and a dead process's is removed by the next import). A destination that
already exists with the member's size is kept, so a rerun on a complete root writes nothing and an interrupted
import resumes; one that exists with another size is a conflict and nothing is written.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.io import ensure_free_space

from .archives import READ_ERRORS, TEMP_PREFIX, ArchiveError, Member, open_source, read_member
from .emotion import FI_NAME, IMAGE_SUFFIXES
from .images import Listing, read_metadata

__all__ = ["IMPORTABLE", "ArchiveError", "ImportReport", "Plan", "import_dataset", "split_counts"]

IMPORTABLE = ("emotionroi", "fi")
JUNK_PARTS = {"__MACOSX", ".DS_Store", "Thumbs.db", "desktop.ini"}
ROI_FOLDERS = {"images", "training_testing_split", "ground_truth"}
EXPECTED = {
    "emotionroi": "images/<class>/<file>.jpg and training_testing_split/training.txt + testing.txt "
                  "(class: anger, disgust, fear, joy, sadness, surprise)",
    "fi": "<class>_<n>.jpg, flat or in <class>/ folders (class: amusement, anger, awe, contentment, disgust, "
          "excitement, fear, sadness)",
}


def class_keys(dataset: str) -> list[str]:
    return [c["key"] for c in sorted(read_metadata(dataset)["classes"], key=lambda c: c["id"])]


# --------------------------------------------------------------------------------------------------------------
# Recognising the published layouts
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Plan:
    """What goes where: ``files`` (member, destination relative to ROOT) in archive order, ``texts`` (destination
    -> bytes, written last), images per class, what the layout was and what was ignored."""

    dataset: str
    wrapper: str = ""
    files: list[tuple[Member, str]] = field(default_factory=list)
    texts: dict[str, bytes] = field(default_factory=dict)
    per_class: Counter = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)

    def add(self, member: Member, dest: str, cls: str) -> None:
        self.files.append((member, dest))
        self.per_class[cls] += 1


def _is_junk(name: str) -> bool:
    parts = name.split("/")
    return any(p in JUNK_PARTS or p.startswith("._") for p in parts) or parts[0].startswith(TEMP_PREFIX) \
        or (len(parts) > 1 and parts[0] == "bench_splits")


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def strip_wrapper(members: dict[str, Member], layout_folders: set[str]) -> tuple[str, dict[str, Member]]:
    """Drop up to two single top-level wrapper folders (one not named like a folder of the layout itself)."""
    names = {n: m for n, m in members.items() if not _is_junk(n)}
    prefix = ""
    for _ in range(2):
        tops = {n.split("/", 1)[0] for n in names}
        if len(tops) != 1 or not all("/" in n for n in names):
            break
        top = tops.pop()
        if top.lower() in layout_folders:
            break
        names = {n.split("/", 1)[1]: m for n, m in names.items()}
        prefix += f"{top}/"
    return prefix, names


def found(names: dict[str, Member], wrapper: str) -> str:
    """What the archive holds at the top (after the wrapper): the error's 'found' part."""
    tops = Counter(n.split("/", 1)[0] + ("/" if "/" in n else "") for n in names)
    shown = ", ".join(f"{t} ({k} files)" if t.endswith("/") else t for t, k in sorted(tops.items())[:8])
    more = f", ... ({len(tops)} entries)" if len(tops) > 8 else ""
    where = f" (inside the wrapper folder {wrapper})" if wrapper else ""
    return f"{shown or 'no files'}{more}{where}"


def _not_layout(dataset: str, label: str, names: dict[str, Member], wrapper: str, detail: str = "") -> ArchiveError:
    title = {"emotionroi": "EmotionROI", "fi": "FI"}[dataset]
    return ArchiveError(f"{label} is not the {title} archive as published{detail}: expected {EXPECTED[dataset]}, "
                        f"under at most one wrapper folder; found {found(names, wrapper)}")


def _official_list(data: bytes, keys: list[str], where: str) -> tuple[bytes, list[str], bool]:
    """An official split list -> (bytes to write, its ``class/file`` items, whether it is kept byte for byte)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ArchiveError(f"{where}: not a UTF-8 text file") from None
    items, same = [], True
    for n, line in enumerate(text.splitlines(), 1):
        raw = line.strip()
        if not raw:
            continue
        item = raw.replace("\\", "/")
        item = item[len("images/"):] if item.lower().startswith("images/") else item
        cls, _, rest = item.partition("/")
        if cls.lower() not in keys or not rest or "/" in rest:
            raise ArchiveError(f"{where}:{n}: expected '<class>/<file>.jpg' with class in {keys}, got {raw!r}")
        items.append(f"{cls.lower()}/{rest}")
        same = same and items[-1] == raw
    return (data if same else "".join(f"{i}\n" for i in items).encode()), items, same


def _twice(label: str, first: Member, second: Member, as_name: str) -> ArchiveError:
    """Two members the layout reads as one (folder names are matched in any case)."""
    return ArchiveError(f"refusing {label}: members {first.name!r} and {second.name!r} are both {as_name} once "
                        "folder names are matched in any case; which one to import would be a guess "
                        "(nothing was written)")


def plan_emotionroi(members: dict[str, Member], source: Any) -> Plan:
    keys = class_keys("emotionroi")
    wrapper, names = strip_wrapper(members, ROI_FOLDERS)
    plan = Plan("emotionroi", wrapper)
    images: dict[str, Member] = {}
    lists: dict[str, Member] = {}
    stray: list[str] = []
    ignored: Counter = Counter()
    for name, m in names.items():
        parts = name.split("/")
        top = parts[0].lower()
        if top == "images" and _is_image(name):
            if len(parts) != 3 or parts[1].lower() not in keys:
                stray.append(name)
                continue
            item = f"{parts[1].lower()}/{parts[2]}"
            if item in images:
                raise _twice(source.label, images[item], m, f"images/{item}")
            images[item] = m
            plan.add(m, f"images/{item}", parts[1].lower())
        elif top == "training_testing_split" and len(parts) == 2 and parts[1].lower() in ("training.txt", "testing.txt"):
            if parts[1].lower() in lists:
                raise _twice(source.label, lists[parts[1].lower()], m, f"training_testing_split/{parts[1].lower()}")
            lists[parts[1].lower()] = m
        else:
            ignored[parts[0] + ("/" if len(parts) > 1 else "")] += 1
    if not images or len(lists) < 2:
        missing = [w for w, ok in (("images/<class>/", images), ("training.txt", "training.txt" in lists),
                                   ("testing.txt", "testing.txt" in lists)) if not ok]
        raise _not_layout("emotionroi", source.label, names, wrapper, f" (no {', no '.join(missing)})")
    if stray:
        raise _not_layout("emotionroi", source.label, names, wrapper,
                          f" ({len(stray)} images are not in images/<class>/, e.g. {', '.join(stray[:3])})")
    listed: dict[str, list[str]] = {}
    for fname in ("training.txt", "testing.txt"):
        where = f"{source.label}: {wrapper}training_testing_split/{fname}"
        data, items, same = _official_list(read_member(source, lists[fname]), keys, where)
        absent = [i for i in items if i not in images]
        if absent:
            raise ArchiveError(f"{where} lists {len(absent)} images that are not in images/ (e.g. {', '.join(absent[:3])})")
        plan.texts[f"training_testing_split/{fname}"] = data
        listed[fname] = items
        if not same:
            plan.notes.append(f"{fname}: class names lower-cased / separators normalised to match images/<class>/")
    overlap = set(listed["training.txt"]) & set(listed["testing.txt"])
    if overlap:
        plan.notes.append(f"{len(overlap)} images are in both training.txt and testing.txt (kept as published)")
    unused = len(images) - len(set(listed["training.txt"]) | set(listed["testing.txt"]))
    if unused:
        plan.notes.append(f"{unused} images are in neither training.txt nor testing.txt (imported, not used)")
    if ignored:
        plan.notes.append("ignored (not read by the adapter): " + ", ".join(f"{k} ({v} files)" for k, v in sorted(ignored.items())))
    return plan


def plan_fi(members: dict[str, Member], source: Any) -> Plan:
    keys = class_keys("fi")
    wrapper, names = strip_wrapper(members, set(keys))
    plan = Plan("fi", wrapper)
    seen: dict[str, str] = {}
    stray: list[str] = []
    ignored = 0
    for name, m in names.items():
        if not _is_image(name):
            ignored += 1
            continue
        parts = name.split("/")
        match = FI_NAME.match(parts[-1])
        named = match.group(1).lower() if match else None
        cls = named if len(parts) == 1 else parts[0].lower() if len(parts) == 2 else None
        if cls not in keys:
            stray.append(name)
            continue
        if named is not None and named != cls:
            raise ArchiveError(f"{source.label}: {wrapper}{name}: the file name says {named!r} but it is in the {cls!r} folder")
        if parts[-1] in seen:
            raise ArchiveError(f"{source.label}: {parts[-1]} appears twice ({wrapper}{seen[parts[-1]]} and {wrapper}{name})")
        seen[parts[-1]] = name
        plan.add(m, f"{cls}/{parts[-1]}", cls)
    if not plan.files:
        raise _not_layout("fi", source.label, names, wrapper, " (no image of the 8 FI classes)")
    if stray:
        raise _not_layout("fi", source.label, names, wrapper,
                          f" ({len(stray)} images are neither <class>_<n>.jpg nor in a class folder, "
                          f"e.g. {', '.join(stray[:3])})")
    if ignored:
        plan.notes.append(f"ignored {ignored} files that are not images")
    return plan


PLANNERS: dict[str, Callable[[dict[str, Member], Any], Plan]] = {"emotionroi": plan_emotionroi, "fi": plan_fi}


# --------------------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------------------


@dataclass
class ImportReport:
    dataset: str
    source: str
    root: Path
    wrapper: str
    written: int
    kept: int
    bytes_written: int
    per_class: dict[str, int]
    notes: list[str]


def _pending(plan: Plan, root: Path, label: str) -> tuple[list[tuple[Member, str]], dict[str, bytes], int]:
    """What still has to be written (files, texts) and how many destinations are already complete; a destination
    that exists with other content is a conflict (raised before anything is written)."""
    files, texts, kept, conflicts = [], {}, 0, []
    for member, dest in plan.files:
        try:
            st = os.lstat(root / dest)
        except FileNotFoundError:
            files.append((member, dest))
            continue
        if stat.S_ISREG(st.st_mode) and st.st_size == member.size:
            kept += 1
        else:
            conflicts.append(f"{dest} ({st.st_size:,} bytes here, {member.size:,} in the archive)")
    for dest, data in plan.texts.items():
        path = root / dest
        if not path.exists():
            texts[dest] = data
        elif path.is_file() and not path.is_symlink() and path.read_bytes() == data:
            kept += 1
        else:
            conflicts.append(f"{dest} (differs from {label}'s)")
    if conflicts:
        raise ArchiveError(f"{root} already holds other files under the names {label} would write: "
                           f"{', '.join(conflicts[:3])}{' ...' if len(conflicts) > 3 else ''} ({len(conflicts)} in all); "
                           "nothing was written: move them away or import into an empty folder")
    return files, texts, kept


def _remove_stale_temps(root: Path) -> None:
    """Temp folders of imports whose process is gone (killed mid-import)."""
    for folder in root.glob(f"{TEMP_PREFIX}*"):
        try:
            os.kill(int(folder.name[len(TEMP_PREFIX):].split("-", 1)[0]), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except (ValueError, OSError):
            pass


def _destination(root: Path, dest: str) -> Path:
    target = root / dest
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.parent.resolve().is_relative_to(root) or target.is_symlink():
        raise ArchiveError(f"{target}: leads outside {root} (a link in the root?); refusing to write there")
    return target


def _write(source: Any, files: list[tuple[Member, str]], texts: dict[str, bytes], root: Path,
           progress: Callable[[int], None] | None) -> None:
    """Each file into a temp folder inside ROOT, then renamed to its final name; the split lists last."""
    _remove_stale_temps(root)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-", dir=root))
    current = ""
    try:
        for i, (member, dest) in enumerate(files):
            current, part = member.name, tmp / f"{i}.part"
            with source.open(member) as fh, open(part, "wb") as out:
                shutil.copyfileobj(fh, out, 1 << 20)
            os.replace(part, _destination(root, dest))
            if progress:
                progress(1)
        for dest, data in texts.items():
            current, part = dest, tmp / "list.part"
            part.write_bytes(data)
            os.replace(part, _destination(root, dest))
    except READ_ERRORS as err:
        raise ArchiveError(f"importing {source.label} into {root} failed at {current}: {err} (every file already "
                           "under its final name is complete; fix the cause and run the import again to resume)") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def import_dataset(dataset: str, source: Path | str, root: Path | str, *, progress: Callable[[int], None] | None = None,
                   progress_total: Callable[[int], None] | None = None) -> ImportReport:
    """Recognise ``source`` (zip, tar or folder) as ``dataset``'s published layout and place it under ``root``."""
    if dataset not in PLANNERS:
        raise ArchiveError(f"bench data import knows {', '.join(IMPORTABLE)}, not {dataset!r}")
    root = Path(root).expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise ArchiveError(f"--root {root} is a file, not a folder")
    src = open_source(Path(source).expanduser(), root)
    try:
        try:
            members = src.members()
        except READ_ERRORS as err:
            raise ArchiveError(f"{src.label}: cannot read the archive: {err}") from None
        plan = PLANNERS[dataset](members, src)
        files, texts, kept = _pending(plan, root, src.label)
        size = sum(m.size for m, _ in files)
        if files or texts:
            root.mkdir(parents=True, exist_ok=True)
            ensure_free_space(root, size, f"importing {src.label}")
            if progress_total:
                progress_total(len(files))
            _write(src, files, texts, root, progress)
    finally:
        src.close()
    return ImportReport(dataset, src.label, root, plan.wrapper, len(files) + len(texts), kept, size,
                        dict(sorted(plan.per_class.items())), plan.notes)


def split_counts(listing: Listing, keys: list[str]) -> dict[str, dict[str, int]]:
    """Images per class (rows, in label order) and split (columns), from an adapter's listing."""
    per_split = {s: np.bincount(np.asarray(listing.labels[s], dtype=np.int64), minlength=len(keys)) for s in listing.splits}
    return {k: {s: int(per_split[s][i]) for s in listing.splits} for i, k in enumerate(keys)}
