"""``bench data import``: EmotionROI and FI archives in their published layouts (small generated JPEGs), unpacked
into a verified root; hostile and wrong archives refused with nothing written; reruns and interrupted imports."""

from __future__ import annotations

import io
import os
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.cli.data import data_app  # noqa: E402
from bench.datasets import importers  # noqa: E402
from bench.datasets.emotion import FI, EmotionROI  # noqa: E402
from bench.datasets.images import Manifest  # noqa: E402

runner = CliRunner()
ROI_KEYS = ["anger", "disgust", "fear", "joy", "sadness", "surprise"]
FI_KEYS = ["amusement", "anger", "awe", "contentment", "disgust", "excitement", "fear", "sadness"]
ROI_PER_CLASS, ROI_TEST = 8, 2  # 6 train (1 of them val at val_fraction 0.1) + 2 test per class
FI_PER_CLASS = 20  # 80/5/15 -> 16 / 1 / 3 per class


def jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=80)
    return buf.getvalue()


def roi_members(wrapper: str = "", folder_case=str.lower) -> dict[str, bytes]:
    """EmotionROI as published: images/<class>/<n>.jpg, ground_truth/ maps, the official training/testing lists."""
    files, train, test = {}, [], []
    for c, key in enumerate(ROI_KEYS):
        for i in range(1, ROI_PER_CLASS + 1):
            files[f"{wrapper}images/{folder_case(key)}/{i}.jpg"] = jpeg(100 * c + i)
            files[f"{wrapper}ground_truth/{key}/{i}.jpg"] = b"roi map, not read"
            (test if i > ROI_PER_CLASS - ROI_TEST else train).append(f"{key}/{i}.jpg")
    files[f"{wrapper}training_testing_split/training.txt"] = "".join(f"{p}\r\n" for p in train).encode()
    files[f"{wrapper}training_testing_split/testing.txt"] = "".join(f"{p}\r\n" for p in test).encode()
    return files


def fi_members(wrapper: str = "", folders: bool = False) -> dict[str, bytes]:
    return {f"{wrapper}{key + '/' if folders else ''}{key}_{i}.jpg": jpeg(1000 * c + i)
            for c, key in enumerate(FI_KEYS) for i in range(FI_PER_CLASS)}


def write_zip(path: Path, files: dict[str, bytes], junk: bool = True, dirs: bool = True) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        folders = sorted({n.rsplit("/", 1)[0] + "/" for n in files if "/" in n}) if dirs else []
        for d in folders:
            zf.writestr(d, b"")
        for name, data in files.items():
            zf.writestr(name, data)
        if junk:
            zf.writestr("__MACOSX/._x.jpg", b"resource fork")
    return path


def write_tar(path: Path, files: dict[str, bytes], extra: list[tarfile.TarInfo] = ()) -> Path:
    with tarfile.open(path, "w:gz" if path.name.endswith("gz") else "w") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for info in extra:
            tf.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    return path


def write_folder(path: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(data)
    return path


def run_import(dataset: str, source: Path, root: Path, cache: Path):
    return runner.invoke(data_app, ["import", "--dataset", dataset, "--from", str(source), "--root", str(root),
                                    "--set", f'paths.cache="{cache}"', "--no-progress", "--workers", "1"])


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under root: (size, mtime_ns)."""
    return {p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def class_row(output: str, cls: str) -> list[str]:
    row = next(line for line in output.splitlines() if line.strip("│┃ ").startswith(f"{cls} "))
    return [c.strip() for c in row.strip("│┃ ").split("│")]


def check_roi_root(root: Path, cache: Path, published: dict[str, bytes], wrapper: str = "") -> None:
    data = EmotionROI(EmotionROI.Config(), root, cache / "load")
    listing = data.listing()
    assert {s: len(p) for s, p in listing.paths.items()} == {"train": 30, "val": 6, "test": 12}
    testing = published[f"{wrapper}training_testing_split/testing.txt"]
    assert (root / "training_testing_split/testing.txt").read_bytes() == testing  # the official split, byte for byte
    assert (root / "training_testing_split/training.txt").read_bytes() == published[f"{wrapper}training_testing_split/training.txt"]
    assert listing.paths["test"] == [f"images/{line}" for line in testing.decode().split()]
    where = listing.paths["test"].index("images/fear/7.jpg")
    assert listing.labels["test"][where] == ROI_KEYS.index("fear") == 2
    assert (root / "images/fear/7.jpg").read_bytes() == jpeg(100 * 2 + 7)
    assert not (root / "ground_truth").exists() and not list(root.glob(".bench-import-*"))
    manifest = Manifest.read(next(cache.glob("datasets/emotionroi/manifest-*.json")))
    assert manifest.counts() == {"train": {"images": 30, "ok": 30, "missing": 0, "corrupt": 0},
                                 "val": {"images": 6, "ok": 6, "missing": 0, "corrupt": 0},
                                 "test": {"images": 12, "ok": 12, "missing": 0, "corrupt": 0}}


# ---------------------------------------------------------------------------------------------------------------
# Good archives
# ---------------------------------------------------------------------------------------------------------------


def test_emotionroi_zip_with_wrapper_ground_truth_and_capitalised_folders(tmp_path):
    published = roi_members("EmotionROI/", folder_case=str.capitalize)
    archive = write_zip(tmp_path / "EmotionROI.zip", published)
    root, cache = tmp_path / "data" / "emotionroi", tmp_path / "cache"
    result = run_import("emotionroi", archive, root, cache)
    assert result.exit_code == 0, result.output
    assert "imported 50 files" in result.output and "wrapper folder EmotionROI/" in result.output
    assert "ignored (not read by the adapter): ground_truth/ (48 files)" in result.output
    assert class_row(result.output, "joy") == ["joy", "5", "1", "2", "8"]
    assert class_row(result.output, "all") == ["all", "30", "6", "12", "48"]
    assert "manifest sha256:" in result.output  # verify's report follows
    check_roi_root(root, cache, published, "EmotionROI/")
    assert sorted(p.name for p in (root / "images").iterdir()) == ROI_KEYS

    before = tree(root)
    again = run_import("emotionroi", archive, root, cache)
    assert again.exit_code == 0, again.output
    assert f"{root} already holds every file of {archive}: nothing to import" in again.output
    assert tree(root) == before  # nothing written, not even a split file


def test_emotionroi_already_extracted_folder_and_the_root_itself(tmp_path):
    published = roi_members()
    folder = write_folder(tmp_path / "Downloads" / "EmotionROI", published)
    root, cache = tmp_path / "roi", tmp_path / "cache"
    result = run_import("emotionroi", folder, root, cache)
    assert result.exit_code == 0, result.output
    check_roi_root(root, cache, published)
    before = tree(folder)
    again = run_import("emotionroi", folder, folder, cache)  # in place: nothing to copy, the split file is drawn
    assert again.exit_code == 0, again.output
    assert "nothing to import" in again.output
    assert set(tree(folder)) - set(before) == {"bench_splits/emotionroi_val_seed0_frac0.1.txt"}


def test_fi_tar_gz_flat(tmp_path):
    published = fi_members()
    archive = write_tar(tmp_path / "FI.tar.gz", published)
    root, cache = tmp_path / "fi", tmp_path / "cache"
    result = run_import("fi", archive, root, cache)
    assert result.exit_code == 0, result.output
    assert "imported 160 files" in result.output and "wrapper" not in result.output
    assert class_row(result.output, "awe") == ["awe", "16", "1", "3", "20"]
    assert class_row(result.output, "all") == ["all", "128", "8", "24", "160"]
    listing = FI(FI.Config(), root, cache / "load").listing()
    assert {s: len(p) for s, p in listing.paths.items()} == {"train": 128, "val": 8, "test": 24}
    paths = [p for s in listing.splits for p in listing.paths[s]]
    labels = np.concatenate([listing.labels[s] for s in listing.splits])
    assert labels[paths.index("excitement/excitement_7.jpg")] == FI_KEYS.index("excitement") == 5
    assert (root / "excitement/excitement_7.jpg").read_bytes() == published["excitement_7.jpg"]
    split_file = root / "bench_splits" / "fi_seed0_80-5-15.txt"
    assert split_file.is_file() and len(split_file.read_text().splitlines()) == 160
    manifest = Manifest.read(next(cache.glob("datasets/fi/manifest-*.json")))
    assert {s: c["ok"] for s, c in manifest.counts().items()} == {"train": 128, "val": 8, "test": 24}

    before = tree(root)
    again = run_import("fi", archive, root, cache)
    assert again.exit_code == 0 and "nothing to import" in again.output
    assert tree(root) == before


def test_fi_zip_in_class_folders_matches_the_flat_import(tmp_path):
    flat_root, root, cache = tmp_path / "flat", tmp_path / "fi", tmp_path / "cache"
    assert run_import("fi", write_tar(tmp_path / "FI.tar", fi_members()), flat_root, cache).exit_code == 0
    archive = write_zip(tmp_path / "FI.zip", fi_members("emotion_dataset/", folders=True))
    result = run_import("fi", archive, root, cache)
    assert result.exit_code == 0, result.output
    assert "wrapper folder emotion_dataset/" in result.output
    assert class_row(result.output, "fear") == ["fear", "16", "1", "3", "20"]
    assert sorted(p.name for p in root.iterdir()) == sorted(["bench_splits", *FI_KEYS])
    # the same paths, the same split file and the same manifest however the authors packed it
    name = "bench_splits/fi_seed0_80-5-15.txt"
    assert (root / name).read_bytes() == (flat_root / name).read_bytes()
    sha = [Manifest.read(p).sha256() for p in sorted(cache.glob("datasets/fi/manifest-*.json"))]
    assert len(sha) == 2 and sha[0] == sha[1]


def test_interrupted_import_leaves_no_half_file_and_resumes(tmp_path, monkeypatch):
    published = fi_members()
    archive = write_zip(tmp_path / "FI.zip", published)
    root = tmp_path / "fi"
    real_copy, calls = importers.shutil.copyfileobj, []

    def copy_then_die(src, dst, length=0):
        calls.append(1)
        if len(calls) == 6:
            dst.write(src.read(100))  # half a file in the temp folder, then Ctrl-C
            raise KeyboardInterrupt
        real_copy(src, dst, length)

    monkeypatch.setattr(importers.shutil, "copyfileobj", copy_then_die)
    with pytest.raises(KeyboardInterrupt):
        importers.import_dataset("fi", archive, root)
    monkeypatch.setattr(importers.shutil, "copyfileobj", real_copy)
    placed = tree(root)
    assert len(placed) == 5 and not list(root.glob(".bench-import-*"))
    assert all(size == len(published[name.split("/")[1]]) for name, (size, _) in placed.items())
    report = importers.import_dataset("fi", archive, root)
    assert (report.written, report.kept) == (155, 5)
    assert sum(report.per_class.values()) == 160 and report.per_class["amusement"] == 20


# ---------------------------------------------------------------------------------------------------------------
# Refused archives: nothing is written
# ---------------------------------------------------------------------------------------------------------------


def _link(name: str, target: str, hard: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = (tarfile.LNKTYPE if hard else tarfile.SYMTYPE), target
    return info


def _device(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.CHRTYPE
    return info


@pytest.mark.parametrize("kind", ["dotdot", "absolute-tar", "absolute-zip", "symlink-out", "hardlink-out", "device"])
def test_hostile_archive_is_refused_and_nothing_is_written(tmp_path, kind):
    outside = tmp_path / "outside"
    outside.mkdir()
    good = fi_members()
    if kind == "dotdot":
        archive = write_tar(tmp_path / "evil.tar", {**good, "../evil.jpg": jpeg(1)})
        expected = "member '../evil.jpg' has a '..' component"
    elif kind == "absolute-tar":
        archive = write_tar(tmp_path / "evil.tgz", {**good, f"{outside}/abs.jpg": jpeg(2)})
        expected = f"member '{outside}/abs.jpg' has an absolute path"
    elif kind == "absolute-zip":
        archive = write_zip(tmp_path / "evil.zip", {**good, f"{outside}/abs.jpg": jpeg(2)}, dirs=False)
        expected = f"member '{outside}/abs.jpg' has an absolute path"
    elif kind == "symlink-out":
        archive = write_tar(tmp_path / "evil.tar", good, [_link("anger_99.jpg", "../../outside/secret")])
        expected = "link 'anger_99.jpg' -> '../../outside/secret' points outside the archive"
    elif kind == "hardlink-out":
        archive = write_tar(tmp_path / "evil.tar", good, [_link("awe_99.jpg", "/etc/passwd", hard=True)])
        expected = "link 'awe_99.jpg' -> '/etc/passwd' points outside the archive"
    else:
        archive = write_tar(tmp_path / "evil.tar", good, [_device("fear_99.jpg")])
        expected = "member 'fear_99.jpg' is a device, fifo or other special file"
    root = tmp_path / "data" / "fi"
    result = run_import("fi", archive, root, tmp_path / "cache")
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert f"refusing {archive}: {expected}" in message and "(nothing was written)" in message
    assert "Traceback" not in result.output
    assert not root.exists() and list(outside.iterdir()) == [] and not (tmp_path / "evil.jpg").exists()
    assert not (tmp_path / "data" / "evil.jpg").exists()


def test_a_link_inside_the_archive_is_read_as_its_target(tmp_path):
    files = fi_members()
    archive = write_tar(tmp_path / "FI.tar", files, [_link("anger_99.jpg", "anger_0.jpg"),
                                                      _link("anger_98.jpg", "anger_1.jpg", hard=True)])
    report = importers.import_dataset("fi", archive, tmp_path / "fi")
    assert report.per_class["anger"] == 22 and not (tmp_path / "fi/anger/anger_99.jpg").is_symlink()
    assert (tmp_path / "fi/anger/anger_99.jpg").read_bytes() == files["anger_0.jpg"]
    assert (tmp_path / "fi/anger/anger_98.jpg").read_bytes() == files["anger_1.jpg"]


def test_wrong_layouts_name_what_was_expected_and_found(tmp_path):
    photos = write_zip(tmp_path / "photos.zip", {"photos/cat.jpg": jpeg(1), "photos/dog.jpg": jpeg(2)}, junk=False)
    result = run_import("emotionroi", photos, tmp_path / "roi", tmp_path / "cache")
    assert result.exit_code == 2
    assert " ".join(result.output.split()) == (
        f"error: {photos} is not the EmotionROI archive as published (no images/<class>/, no training.txt, no "
        "testing.txt): expected images/<class>/<file>.jpg and training_testing_split/training.txt + testing.txt "
        "(class: anger, disgust, fear, joy, sadness, surprise), under at most one wrapper folder; found cat.jpg, "
        "dog.jpg (inside the wrapper folder photos/)")
    # FI handed to the EmotionROI importer, and EmotionROI handed to the FI importer
    fi_zip = write_zip(tmp_path / "FI.zip", fi_members("emotion_dataset/", folders=True))
    result = run_import("emotionroi", fi_zip, tmp_path / "roi", tmp_path / "cache")
    assert result.exit_code == 2 and "found amusement/ (20 files), anger/ (20 files)" in " ".join(result.output.split())
    roi_zip = write_zip(tmp_path / "roi.zip", roi_members())
    result = run_import("fi", roi_zip, tmp_path / "fi", tmp_path / "cache")
    message = " ".join(result.output.split())
    assert result.exit_code == 2 and "is not the FI archive as published (no image of the 8 FI classes)" in message
    assert "found ground_truth/ (48 files), images/ (48 files), training_testing_split/ (2 files)" in message
    files = {**fi_members(), "misc/cat.jpg": jpeg(3), "dog_1.jpg": jpeg(4), "readme.txt": b"FI"}
    result = run_import("fi", write_zip(tmp_path / "mixed.zip", files), tmp_path / "fi", tmp_path / "cache")
    assert result.exit_code == 2 and ("(2 images are neither <class>_<n>.jpg nor in a class folder, e.g. misc/cat.jpg, "
                                      "dog_1.jpg)") in " ".join(result.output.split())
    # a class folder that is not an EmotionROI class; a list naming an image the archive lacks
    files = roi_members()
    files["images/happiness/1.jpg"] = jpeg(9)
    result = run_import("emotionroi", write_zip(tmp_path / "odd.zip", files), tmp_path / "roi", tmp_path / "cache")
    assert result.exit_code == 2 and "(1 images are not in images/<class>/, e.g. images/happiness/1.jpg)" in result.output
    files = roi_members()
    del files["images/joy/8.jpg"]
    result = run_import("emotionroi", write_zip(tmp_path / "short.zip", files), tmp_path / "roi", tmp_path / "cache")
    assert result.exit_code == 2
    assert "training_testing_split/testing.txt lists 1 images that are not in images/ (e.g. joy/8.jpg)" in " ".join(result.output.split())
    assert not (tmp_path / "roi").exists() and not (tmp_path / "fi").exists()
    not_archive = tmp_path / "notes.txt"
    not_archive.write_text("hello")
    result = run_import("fi", not_archive, tmp_path / "fi", tmp_path / "cache")
    assert result.exit_code == 2 and "is neither a zip nor a tar archive" in result.output


def test_existing_different_file_is_a_conflict_and_nothing_is_overwritten(tmp_path):
    root = tmp_path / "fi"
    (root / "awe").mkdir(parents=True)
    (root / "awe" / "awe_3.jpg").write_bytes(b"someone else's file")
    result = run_import("fi", write_zip(tmp_path / "FI.zip", fi_members()), root, tmp_path / "cache")
    assert result.exit_code == 2
    assert "awe/awe_3.jpg (19 bytes here," in result.output and "nothing was written" in result.output
    assert tree(root).keys() == {"awe/awe_3.jpg"} and (root / "awe/awe_3.jpg").read_bytes() == b"someone else's file"


def test_root_inside_the_source_folder_is_not_read_back(tmp_path):
    folder = write_folder(tmp_path / "FI", fi_members())
    root = folder / "bench-root"
    first = importers.import_dataset("fi", folder, root)
    assert (first.written, first.kept) == (160, 0)
    again = importers.import_dataset("fi", folder, root)  # bench-root/<class>/... is not taken for FI images
    assert (again.written, again.kept) == (0, 160)


def test_official_lists_are_rewritten_only_to_match_the_class_folders(tmp_path):
    files = roi_members("EmotionROI/")
    name = "EmotionROI/training_testing_split/testing.txt"
    files[name] = files[name].decode().replace("joy/", "Joy\\").encode()
    report = importers.import_dataset("emotionroi", write_zip(tmp_path / "roi.zip", files), tmp_path / "roi")
    assert report.notes == ["testing.txt: class names lower-cased / separators normalised to match images/<class>/",
                            "ignored (not read by the adapter): ground_truth/ (48 files)"]
    lines = (tmp_path / "roi/training_testing_split/testing.txt").read_text().splitlines()
    assert len(lines) == 12 and "joy/7.jpg" in lines and lines == roi_members()["training_testing_split/testing.txt"].decode().split()
    assert (tmp_path / "roi/training_testing_split/training.txt").read_bytes() == files["EmotionROI/training_testing_split/training.txt"]


def test_damaged_member_or_truncated_archive_is_an_error_with_no_half_file(tmp_path):
    files = fi_members()
    archive = write_zip(tmp_path / "FI.zip", files, junk=False)
    data = bytearray(archive.read_bytes())
    at = data.index(files["awe_0.jpg"]) + 200
    data[at] ^= 0xFF  # one flipped byte in a stored member: its CRC-32 no longer matches
    archive.write_bytes(bytes(data))
    root = tmp_path / "fi"
    with pytest.raises(importers.ArchiveError, match=r"failed at awe_0\.jpg: Bad CRC-32 .*run the import again to resume"):
        importers.import_dataset("fi", archive, root)
    placed = tree(root)
    assert "awe/awe_0.jpg" not in placed and len(placed) == 2 * FI_PER_CLASS and not list(root.glob(".bench-import-*"))
    assert all(size == len(files[name.split("/")[1]]) for name, (size, _) in placed.items())
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(write_tar(tmp_path / "FI.tar.gz", files).read_bytes()[:20000])
    result = run_import("fi", cut, tmp_path / "fi2", tmp_path / "cache")
    assert result.exit_code == 2 and f"{cut}: cannot read the archive:" in " ".join(result.output.split())
    assert not (tmp_path / "fi2").exists()


# ---------------------------------------------------------------------------------------------------------------
# Ambiguous archives (issue 24): two members with one name are refused before anything is written
# ---------------------------------------------------------------------------------------------------------------


def _archive(path: Path, entries: list[tuple[str, bytes]]) -> Path:
    """A zip or tar of ``entries`` in order, names repeated as given (which ``write_zip``/``write_tar`` cannot)."""
    with zipfile.ZipFile(path, "w") if path.suffix == ".zip" else tarfile.open(path, "w") as out:
        for name, data in entries:
            if isinstance(out, zipfile.ZipFile):
                out.writestr(name, data)
            else:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                out.addfile(info, io.BytesIO(data))
    return path


NFC, NFD = "images/joy/caf\u00e9.jpg", "images/joy/cafe\u0301.jpg"


@pytest.mark.filterwarnings("ignore:Duplicate name")  # zipfile warns, and writes the second member all the same
@pytest.mark.parametrize("kind", ["zip-exact", "tar-exact", "zip-dot", "zip-backslash", "zip-nfc", "tar-nfc",
                                  "folder-nfc", "tar-link-over-file"])
def test_duplicate_member_names_are_refused_naming_both(tmp_path, kind):
    """Was: the archive's last member of a name was imported without a word (or both, for NFC/NFD twins)."""
    fi, roi = list(fi_members(folders=True).items()), list(roi_members().items())
    dataset, other = ("emotionroi", jpeg(77)) if "nfc" in kind else ("fi", jpeg(78))
    twins = {"zip-dot": ("awe/awe_3.jpg", "./awe/awe_3.jpg"), "zip-backslash": ("awe/awe_3.jpg", "awe\\awe_3.jpg")}
    first, second = twins.get(kind, (NFC, NFD) if "nfc" in kind else ("awe/awe_3.jpg", "awe/awe_3.jpg"))
    entries = [e for e in (roi if "nfc" in kind else fi) if e[0] != first] + [(first, jpeg(76)), (second, other)]
    if kind == "folder-nfc":
        source = write_folder(tmp_path / "dup", dict(entries))
    elif kind == "tar-link-over-file":
        first, second = "anger/anger_0.jpg", "anger/anger_0.jpg"
        source = write_tar(tmp_path / "dup.tar", dict(fi), [_link("anger/anger_0.jpg", "anger_1.jpg")])
    else:
        source = _archive(tmp_path / f"dup.{kind.split('-')[0]}", entries)
    root = tmp_path / "data"
    result = run_import(dataset, source, root, tmp_path / "cache")
    message = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    show = ascii if "nfc" in kind else repr  # names differing only in their Unicode form: shown as code points
    both = [f"refusing {source}: members {show(a)} and {show(b)} are both" for a, b in [(first, second),
                                                                                       (second, first)]]
    assert both[0] in message or (kind == "folder-nfc" and both[1] in message), message  # a folder lists in any order
    assert ("(the archive holds two entries of that name;" in message) == (first == second)
    assert "(nothing was written)" in message and "Traceback" not in result.output
    assert not root.exists()


@pytest.mark.parametrize("kind", ["list", "class-folder"])
def test_names_the_layout_matches_in_any_case_are_refused_when_they_collide(tmp_path, kind):
    """The importer matches class folders and the split lists in any case: two members it would read as one are
    refused naming both (was: the second list silently replaced the first; a second image named only the class)."""
    files = roi_members()
    if kind == "list":
        first, second = "training_testing_split/training.txt", "training_testing_split/Training.txt"
        files[second] = files["training_testing_split/testing.txt"]
    else:
        first, second = "images/joy/3.jpg", "images/Joy/3.jpg"
        files[second] = jpeg(5)
    archive = write_zip(tmp_path / "roi.zip", files)
    result = run_import("emotionroi", archive, tmp_path / "roi", tmp_path / "cache")
    message = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert f"refusing {archive}: members {first!r} and {second!r} are both" in message, message
    assert not (tmp_path / "roi").exists()
