"""EmotionROI and FI on generated trees in their real layouts: class order, seeded split files (sizes, stability,
reuse), missing/corrupt images (train skipped and counted, val/test refused, `bench data verify` exit codes), the
manifest, and the decoded cache (reused without decoding, rebuilt when the manifest or the size changes, never
used half-written)."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bench.cli.data import data_app  # noqa: E402
from bench.datasets import manifest as manifest_mod  # noqa: E402  (scan_file looks decode_image up there)
from bench.datasets.emotion import FI, EmotionROI  # noqa: E402
from bench.datasets.images import (  # noqa: E402
    DatasetError,
    DatasetNotFoundError,
    Manifest,
    SplitIncompleteError,
    stratified_assignment,
)

ROI_CLASSES = ["anger", "disgust", "fear", "joy", "sadness", "surprise"]
FI_CLASSES = ["amusement", "anger", "awe", "contentment", "disgust", "excitement", "fear", "sadness"]
runner = CliRunner()


def write_jpeg(path: Path, seed: int, size: tuple[int, int] = (32, 24)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, quality=85)


def make_emotionroi(root: Path, n_train: int = 10, n_test: int = 4) -> Path:
    """images/<class>/<n>.jpg and training_testing_split/{training,testing}.txt, like the official release."""
    training, testing = [], []
    for c, cls in enumerate(ROI_CLASSES):
        for i in range(n_train + n_test):
            rel = f"{cls}/{i + 1}.jpg"
            write_jpeg(root / "images" / rel, 1000 * c + i)
            (training if i < n_train else testing).append(rel)
    split = root / "training_testing_split"
    split.mkdir(parents=True)
    (split / "training.txt").write_text("\r\n".join(training) + "\r\n")  # CRLF, as files from Windows are
    (split / "testing.txt").write_text("\n".join(testing) + "\n")
    return root


def make_fi(root: Path, per_class: int = 20, folders: bool = False) -> Path:
    for c, cls in enumerate(FI_CLASSES):
        for i in range(per_class):
            name = f"{cls}_{i:04d}.jpg"
            write_jpeg(root / cls / name if folders else root / name, 50_000 + 1000 * c + i)
    return root


def roi(root: Path, cache: Path, **cfg) -> EmotionROI:
    return EmotionROI(EmotionROI.Config(**cfg), root, cache)


def fi(root: Path, cache: Path, **cfg) -> FI:
    return FI(FI.Config(**cfg), root, cache)


@pytest.fixture
def roi_root(tmp_path: Path) -> Path:
    return make_emotionroi(tmp_path / "EmotionROI")


class DecodeSpy:
    """Replaces manifest.decode_image: counts calls, optionally refuses to decode."""

    def __init__(self, monkeypatch, forbid: bool = False):
        self.calls = 0
        self.forbid = forbid
        self.real = manifest_mod.decode_image
        monkeypatch.setattr(manifest_mod, "decode_image", self)

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.forbid:
            raise AssertionError("decode_image called although the cache should have been reused")
        return self.real(*args, **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# EmotionROI
# ---------------------------------------------------------------------------------------------------------------


def test_emotionroi_classes_splits_and_labels(roi_root, tmp_path):
    data = roi(roi_root, tmp_path / "cache").load(16)
    assert data.task == "multiclass" and [c.key for c in data.classes] == ROI_CLASSES
    assert data.levels == ["polarity", "emotion"]
    assert all(c.sentence and c.hierarchy[0] in ("positive", "negative") for c in data.classes)
    sizes = {s: len(v) for s, v in data.splits.items()}
    assert sizes == {"train": 6 * 9, "val": 6 * 1, "test": 6 * 4}  # val = round(0.1 * 10) per class
    for split in data.splits.values():
        assert split.labels.dtype == np.int64 and split.images.shape[1:] == (16, 16, 3)
        assert isinstance(split.images, np.memmap) and split.images.dtype == np.uint8
        # labels agree with the class folder of each image
        assert [ROI_CLASSES[y] for y in split.labels] == [i.split("/")[1] for i in split.ids]
    assert np.bincount(data.splits["val"].labels, minlength=6).tolist() == [1] * 6
    assert not set(data.splits["val"].ids) & set(data.splits["train"].ids)
    split_file = Path(data.info["split_file"])
    assert split_file.parent == roi_root / "bench_splits" and data.info["split_file_created"]
    assert sorted(f"images/{line}" for line in split_file.read_text().split()) == sorted(data.splits["val"].ids)
    assert data.info["split_sha256"] == hashlib.sha256(split_file.read_bytes()).hexdigest()
    assert len(data.manifest_sha256) == 64 and data.info["skipped"] == {"train": {"missing": 0, "corrupt": 0}}
    json.dumps(data.info)  # goes into every result record


def test_emotionroi_split_file_stable_and_reused(roi_root, tmp_path):
    first = roi(roi_root, tmp_path / "c1").load(16)
    path = Path(first.info["split_file"])
    content, mtime = path.read_bytes(), path.stat().st_mtime_ns
    again = roi(roi_root, tmp_path / "c2").load(16)
    assert not again.info["split_file_created"] and path.stat().st_mtime_ns == mtime
    path.unlink()  # drawn again from the same seed: byte for byte the same file
    redrawn = roi(roi_root, tmp_path / "c3").load(16)
    assert redrawn.info["split_file_created"] and path.read_bytes() == content
    assert redrawn.manifest_sha256 == first.manifest_sha256
    other = roi(roi_root, tmp_path / "c4", split_seed=1).load(16)  # another seed: another file, another version
    assert Path(other.info["split_file"]) != path and other.manifest_sha256 != first.manifest_sha256
    assert sorted(other.splits["val"].labels.tolist()) == sorted(first.splits["val"].labels.tolist())


def test_emotionroi_bad_split_lines_and_missing_root(roi_root, tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        roi(None, tmp_path / "c").load(16)
    msg = str(err.value)
    assert "images/<class>/<file>.jpg" in msg and "training_testing_split" in msg
    assert "paths.data.emotionroi" in msg and "--data-root" in msg and "Peng" in msg
    with pytest.raises(DatasetNotFoundError, match="no images/ folder"):
        roi(tmp_path, tmp_path / "c").load(16)
    (roi_root / "training_testing_split" / "testing.txt").write_text("anger/1.jpg\nhappiness/2.jpg\n")
    with pytest.raises(DatasetError, match=r"testing.txt:2: expected 'class/file.jpg'"):
        roi(roi_root, tmp_path / "c").load(16)


# ---------------------------------------------------------------------------------------------------------------
# FI
# ---------------------------------------------------------------------------------------------------------------


def test_fi_flat_and_folder_layouts_split_80_5_15_identically(tmp_path):
    flat = fi(make_fi(tmp_path / "flat"), tmp_path / "cache").load(16)
    nested = fi(make_fi(tmp_path / "nested", folders=True), tmp_path / "cache").load(16)
    assert [c.key for c in flat.classes] == FI_CLASSES and flat.task == "multiclass"
    for data in (flat, nested):
        assert {s: len(v) for s, v in data.splits.items()} == {"train": 8 * 16, "val": 8 * 1, "test": 8 * 3}
        for split in data.splits.values():
            assert [FI_CLASSES[y] for y in split.labels] == [Path(i).name.rsplit("_", 1)[0] for i in split.ids]
        assert np.bincount(data.splits["test"].labels, minlength=8).tolist() == [3] * 8
    for s in ("train", "val", "test"):  # the split depends on the file names, not on the layout
        assert [Path(i).name for i in flat.splits[s].ids] == [Path(i).name for i in nested.splits[s].ids]
        np.testing.assert_array_equal(flat.splits[s].images, nested.splits[s].images)
    assert nested.splits["train"].ids[0].startswith("amusement/amusement_")
    assert flat.manifest_sha256 != nested.manifest_sha256  # paths differ


def test_fi_split_file_written_once_reused_and_recorded(tmp_path):
    root = make_fi(tmp_path / "FI")
    first = fi(root, tmp_path / "cache").load(16)
    path = Path(first.info["split_file"])
    assert path == root / "bench_splits" / "fi_seed0_80-5-15.txt" and first.info["split_file_created"]
    content = path.read_bytes()
    lines = content.decode().splitlines()
    assert len(lines) == 160 and all(line.split("\t")[0] in ("train", "val", "test") for line in lines)
    write_jpeg(root / "amusement_9999.jpg", 7)  # a new file later: the written split is kept, the file unassigned
    again = fi(root, tmp_path / "cache").load(16)
    assert path.read_bytes() == content and not again.info["split_file_created"]
    assert again.info["unassigned_images"] == 1 and again.manifest_sha256 == first.manifest_sha256
    path.unlink()
    (root / "amusement_9999.jpg").unlink()
    fi(root, tmp_path / "cache2").load(16)
    assert path.read_bytes() == content  # stable across runs: same bytes from the same files and seed
    with pytest.raises(ValueError, match="sum to 1"):
        FI.Config(fractions=(0.8, 0.1, 0.15))


def test_fi_missing_root_message(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        fi(tmp_path, tmp_path / "cache").load(16)
    assert "<class>_<n>.jpg" in str(err.value) and "paths.data.fi" in str(err.value)
    assert not (tmp_path / "bench_splits").exists()


def test_stratified_assignment_is_seeded_and_stratified():
    items = [(f"{c}_{i}.jpg", c) for c in range(3) for i in range(40)]
    fr = {"train": 0.8, "val": 0.05, "test": 0.15}
    a = stratified_assignment(items, fr, seed=0)
    assert a == stratified_assignment(list(reversed(items)), fr, seed=0)
    assert a != stratified_assignment(items, fr, seed=1)
    for c in range(3):
        got = [a[p] for p, y in items if y == c]
        assert (got.count("train"), got.count("val"), got.count("test")) == (32, 2, 6)


# ---------------------------------------------------------------------------------------------------------------
# Missing and corrupt images
# ---------------------------------------------------------------------------------------------------------------


def _val_and_train_paths(root: Path, cache: Path) -> tuple[list[str], list[str]]:
    data = roi(root, cache).load(16)
    return data.splits["val"].ids, data.splits["train"].ids


def test_missing_and_corrupt_train_images_are_skipped_and_counted(roi_root, tmp_path):
    _, train = _val_and_train_paths(roi_root, tmp_path / "probe")
    (roi_root / train[0]).unlink()
    (roi_root / train[1]).write_bytes(b"not a jpeg at all")
    data3 = (roi_root / train[2]).read_bytes()
    (roi_root / train[2]).write_bytes(data3[: len(data3) // 2])  # truncated
    data = roi(roi_root, tmp_path / "cache").load(16)
    assert data.info["skipped"] == {"train": {"missing": 1, "corrupt": 2}}
    assert len(data.splits["train"]) == len(train) - 3 and data.splits["train"].ids == train[3:]
    assert data.info["counts"]["train"] == {"images": len(train), "ok": len(train) - 3, "missing": 1, "corrupt": 2}

    result = runner.invoke(data_app, ["verify", "--dataset", "emotionroi", "--root", str(roi_root),
                                      "--set", f'paths.cache="{tmp_path / "cache"}"', "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "train" in result.output and train[0].split("/", 1)[1] in result.output
    manifest = Manifest.read(next((tmp_path / "cache" / "emotionroi").glob("manifest-*.json")))
    assert manifest.counts()["train"] == {"images": len(train), "ok": len(train) - 3, "missing": 1, "corrupt": 2}
    assert manifest.sha256() == data.manifest_sha256  # verify (full decode) and load (draft) agree here


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
@pytest.mark.parametrize("split", ["val", "test"])
def test_missing_or_corrupt_val_test_image_fails_loudly(roi_root, tmp_path, damage, split):
    val, _ = _val_and_train_paths(roi_root, tmp_path / "probe")
    victim = val[0] if split == "val" else "images/joy/12.jpg"
    if damage == "missing":
        (roi_root / victim).unlink()
    else:
        (roi_root / victim).write_bytes(b"\xff\xd8\xff garbage")
    cache = tmp_path / "cache"
    with pytest.raises(SplitIncompleteError, match=rf"1 {damage} of \d+ {split} images .*{victim}"):
        roi(roi_root, cache).load(16)
    args = ["--dataset", "emotionroi", "--root", str(roi_root), "--set", f'paths.cache="{cache}"', "--no-progress"]
    result = runner.invoke(data_app, ["verify", *args])
    assert result.exit_code == 1, result.output
    row = next(line for line in result.output.splitlines() if line.strip("│┃ ").startswith(split))
    cells = [c.strip() for c in row.strip("│┃ ").split("│")]
    assert cells[3:] == (["1", "0"] if damage == "missing" else ["0", "1"])
    result = runner.invoke(data_app, ["prepare", "--size", "16", *args])
    assert result.exit_code == 1 and "never dropped" in result.output
    assert not list(cache.glob("emotionroi/decoded-*"))  # nothing half-built is left behind


def test_verify_fails_on_a_split_without_one_usable_image(roi_root, tmp_path):
    """Was: every train image gone, `bench data verify` warned and exited 0; nothing could train on it."""
    _, train = _val_and_train_paths(roi_root, tmp_path / "probe")
    for path in train:
        (roi_root / path).unlink()
    result = runner.invoke(data_app, ["verify", "--dataset", "emotionroi", "--root", str(roi_root),
                                      "--set", f'paths.cache="{tmp_path / "cache"}"', "--no-progress"])
    assert result.exit_code == 1, result.output
    assert "train: no usable images under" in result.output.replace("\n", " ")


def test_verify_cli_reports_no_root_as_one_message(tmp_path):
    result = runner.invoke(data_app, ["verify", "--dataset", "fi", "--set", f'paths.cache="{tmp_path}"', "--no-progress"])
    assert result.exit_code == 2
    assert "not found: no data root is configured" in result.output and "paths.data.fi" in result.output
    assert "Traceback" not in result.output


# ---------------------------------------------------------------------------------------------------------------
# Manifest and decoded cache
# ---------------------------------------------------------------------------------------------------------------


def test_manifest_records_every_file(roi_root, tmp_path):
    adapter = roi(roi_root, tmp_path / "cache")
    manifest, path = adapter.verify()
    payload = json.loads(path.read_text())
    assert payload["manifest_sha256"] == manifest.sha256() and payload["fields"][:6] == [
        "path", "bytes", "sha256", "width", "height", "status"]
    for split, entries in manifest.entries.items():
        for e in entries[:3]:
            raw = (roi_root / e.path).read_bytes()
            assert (e.bytes, e.sha256, e.width, e.height, e.status, e.check) == (
                len(raw), hashlib.sha256(raw).hexdigest(), 32, 24, "ok", "full")
    assert sum(c["images"] for c in manifest.counts().values()) == 6 * 14
    assert adapter.load(16).manifest_sha256 == manifest.sha256()


def test_cache_is_reused_without_decoding(roi_root, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = roi(roi_root, cache).load(16)
    assert not first.info["from_cache"]
    spy = DecodeSpy(monkeypatch, forbid=True)
    second = roi(roi_root, cache).load(16)  # a fresh adapter, as a new process would build
    assert spy.calls == 0 and second.info["from_cache"] and second.info["cache"] == first.info["cache"]
    assert second.manifest_sha256 == first.manifest_sha256
    for s in first.splits:
        np.testing.assert_array_equal(first.splits[s].images, second.splits[s].images)
        np.testing.assert_array_equal(first.splits[s].labels, second.splits[s].labels)
    moved = tmp_path / "moved"
    shutil.copytree(roi_root, moved)  # same files elsewhere: scanned once, same dataset version and cache folder
    spy.forbid = False
    third = roi(moved, cache).load(16)
    assert spy.calls > 0
    assert third.manifest_sha256 == first.manifest_sha256 and third.info["cache"] == first.info["cache"]
    spy.forbid = True
    assert roi(moved, cache).load(16).info["from_cache"]


def test_cache_rebuilt_when_manifest_or_size_changes(roi_root, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = roi(roi_root, cache).load(16)
    n_images = sum(len(s) for s in first.splits.values())
    victim = first.splits["test"].ids[0]
    write_jpeg(roi_root / victim, seed=424242)  # new content
    spy = DecodeSpy(monkeypatch)
    second = roi(roi_root, cache).load(16)
    assert second.manifest_sha256 != first.manifest_sha256 and second.info["cache"] != first.info["cache"]
    assert spy.calls == n_images and not second.info["from_cache"]
    expected = np.asarray(Image.open(roi_root / victim).convert("RGB").resize((16, 16), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(second.splits["test"].images[0], expected)
    assert not np.array_equal(first.splits["test"].images[0], second.splits["test"].images[0])
    spy.calls = 0
    bigger = roi(roi_root, cache).load(24)  # another size: another cache, the manifest is reused (stat)
    assert bigger.splits["train"].images.shape[1:] == (24, 24, 3) and spy.calls == n_images
    assert bigger.manifest_sha256 == second.manifest_sha256
    assert len(list((cache / "emotionroi").glob("decoded-*"))) == 3


def test_half_written_cache_is_never_used(roi_root, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = roi(roi_root, cache).load(16)
    folder = Path(first.info["cache"])
    (folder / "meta.json").unlink()  # as if the build had been killed before completing
    spy = DecodeSpy(monkeypatch)
    again = roi(roi_root, cache).load(16)
    assert spy.calls > 0 and not again.info["from_cache"] and (folder / "meta.json").is_file()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    shutil.rmtree(folder)
    monkeypatch.setattr(manifest_mod, "decode_image", interrupted)
    with pytest.raises(KeyboardInterrupt):
        roi(roi_root, cache).load(16)
    assert not folder.exists() and not list((cache / "emotionroi").glob(".build-*"))
    monkeypatch.setattr(manifest_mod, "decode_image", spy.real)
    assert roi(roi_root, cache).load(16).manifest_sha256 == first.manifest_sha256



def test_cached_images_pickle_as_their_path(roi_root, tmp_path):
    """Ray trials receive the loaded dataset by pickle: the memory maps travel as file names, not pixels."""
    data = roi(roi_root, tmp_path / "cache").load(16)
    images = data.splits["train"].images
    blob = pickle.dumps(data, protocol=5)
    assert len(blob) < 20_000 < images.nbytes + data.splits["test"].images.nbytes
    back = pickle.loads(blob)
    for s in data.splits:
        np.testing.assert_array_equal(np.asarray(back.splits[s].images), np.asarray(data.splits[s].images))
    view = pickle.loads(pickle.dumps(images[2:5]))  # a view pickles its own data
    np.testing.assert_array_equal(view, images[2:5])
    batch = images[np.array([4, 1])]
    assert type(batch) is np.ndarray and batch.flags.writeable
