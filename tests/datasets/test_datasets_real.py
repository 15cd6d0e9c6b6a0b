"""Intentonomy from the real official val/test annotation files (``../shared/data/intentonomy``) with small
generated images and a generated train json in the official format; and ``bench run`` end to end on such a root.

Row order: the adapter orders each split by the json's ``images`` list. In the official val and test files the
``annotations`` list has the same order, and the label-vector ``.npy`` files are row for row in that order, which
the tests below check against the real files.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tests.conftest import SHARED as SHARED_ROOT
from bench.datasets.images import DatasetError, DatasetNotFoundError, SplitIncompleteError  # noqa: E402
from bench.datasets.intentonomy import Intentonomy  # noqa: E402

SHARED = SHARED_ROOT / "data" / "intentonomy"
N_TRAIN = 40

pytestmark = pytest.mark.skipif(
    not (SHARED / "intentonomy_val2020.json").is_file(), reason=f"real Intentonomy annotations not found in {SHARED}"
)


def build_root(root: Path, n_train: int = N_TRAIN, seed: int = 0, keep: int | None = None) -> Path:
    """ROOT/annotations/intentonomy_{train,val,test}2020.json + ROOT/low/<md5>.jpg (32x24 generated JPEGs).

    Val and test are the real files (``keep``: only their first ``keep`` images, for a faster end-to-end run)."""
    rng = np.random.default_rng(seed)
    (root / "annotations").mkdir(parents=True)
    for split in ("val", "test"):
        official = json.loads((SHARED / f"intentonomy_{split}2020.json").read_text())
        if keep is not None:
            official["images"] = official["images"][:keep]
            ids = {img["id"] for img in official["images"]}
            official["annotations"] = [a for a in official["annotations"] if a["image_id"] in ids]
        (root / "annotations" / f"intentonomy_{split}2020.json").write_text(json.dumps(official))
    categories = json.loads((SHARED / "intentonomy_val2020.json").read_text())["categories"]
    train = {"info": {"description": "generated for tests"}, "categories": categories, "images": [], "annotations": []}
    for i in range(n_train):
        image_id = f"{rng.integers(2**63):016x}{i:016x}"
        train["images"].append({"id": image_id, "filename": f"low/{image_id}.jpg", "original_id": f"u{i}",
                                "unsplash_url": "https://images.unsplash.com/photo-x?q=30"})
        soft = np.zeros(28)
        picks = rng.choice(28, size=3, replace=False)
        soft[picks] = [1 / 3, 1 / 3, 2 / 3] if i % 2 else [1 / 3, 1.0, 0.0]
        train["annotations"].append({"id": i, "image_id": image_id, "category_ids_softprob": soft.tolist()})
    (root / "annotations" / "intentonomy_train2020.json").write_text(json.dumps(train))
    (root / "low").mkdir()
    for split in ("train", "val", "test"):
        for img in json.loads((root / "annotations" / f"intentonomy_{split}2020.json").read_text())["images"]:
            pixels = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / img["filename"], quality=75)
    return root


@pytest.fixture(scope="module")
def intentonomy_root(tmp_path_factory) -> Path:
    return build_root(tmp_path_factory.mktemp("intentonomy") / "root")


def adapter(root: Path | None, cache: Path, **cfg) -> Intentonomy:
    return Intentonomy(Intentonomy.Config(**cfg), root, cache)


def test_real_val_test_annotations(intentonomy_root, tmp_path):
    data = adapter(intentonomy_root, tmp_path / "cache").load(16)
    assert data.task == "multilabel" and data.num_classes == 28
    assert {s: len(v) for s, v in data.splits.items()} == {"train": N_TRAIN, "val": 498, "test": 1217}
    for split in ("val", "test"):
        npy = np.load(SHARED / f"{split}_label_vectors_intentonomy2020.npy")
        labels = data.splits[split].labels
        assert labels.dtype == np.float32 and labels.shape == npy.shape
        np.testing.assert_array_equal(labels, npy)  # row for row
        official = json.loads((SHARED / f"intentonomy_{split}2020.json").read_text())
        assert data.splits[split].ids == [img["id"] for img in official["images"]]
        assert data.splits[split].ids == [a["image_id"] for a in official["annotations"]]  # same order in the files
        np.testing.assert_array_equal(labels.sum(0), npy.sum(0))
    assert data.splits["val"].labels.sum(0)[25] == 2 and data.splits["test"].labels.sum(0)[25] == 4
    assert data.splits["val"].images.shape == (498, 16, 16, 3) and isinstance(data.splits["test"].images, np.memmap)

    categories = json.loads((SHARED / "intentonomy_val2020.json").read_text())["categories"]
    assert [c.key for c in data.classes] == [c["name"] for c in sorted(categories, key=lambda c: c["id"])]
    shipped = json.loads((SHARED / "classes.json").read_text())["classes"]
    assert [(c.name, c.sentence, c.hierarchy) for c in data.classes] == [
        (c["name"], c["hci_sentence"], (c["coarse"], c["middle"])) for c in shipped]
    assert data.levels == ["coarse", "middle", "fine"]
    assert data.info["skipped"] == {"train": {"missing": 0, "corrupt": 0}}


def test_train_soft_labels_binarised(intentonomy_root, tmp_path):
    train = json.loads((intentonomy_root / "annotations" / "intentonomy_train2020.json").read_text())
    soft = np.array([a["category_ids_softprob"] for a in train["annotations"]])
    default = adapter(intentonomy_root, tmp_path / "cache").load(16)
    np.testing.assert_array_equal(default.splits["train"].labels, (soft > 0).astype(np.float32))
    majority = adapter(intentonomy_root, tmp_path / "cache", train_label_threshold=0.5).load(16)
    np.testing.assert_array_equal(majority.splits["train"].labels, (soft > 0.5).astype(np.float32))
    assert majority.manifest_sha256 != default.manifest_sha256  # labels are part of the dataset version
    assert majority.info["cache"] == default.info["cache"] and majority.info["from_cache"]  # same pixels


def test_label_vector_files(intentonomy_root, tmp_path):
    root = tmp_path / "npy-root"
    shutil.copytree(intentonomy_root, root)
    for split in ("val", "test"):
        shutil.copy(SHARED / f"{split}_label_vectors_intentonomy2020.npy", root / "annotations")
    with pytest.raises(DatasetNotFoundError, match="train_label_vectors_intentonomy2020.npy"):
        adapter(root, tmp_path / "cache", labels="npy").load(16)
    np.save(root / "train_label_vectors_intentonomy2020.npy", np.eye(28)[np.arange(N_TRAIN) % 28])  # in ROOT works too
    data = adapter(root, tmp_path / "cache", labels="npy").load(16)
    from_json = adapter(root, tmp_path / "cache").load(16)
    for split in ("val", "test"):
        np.testing.assert_array_equal(data.splits[split].labels, from_json.splits[split].labels)
    np.testing.assert_array_equal(data.splits["train"].labels, np.eye(28)[np.arange(N_TRAIN) % 28])
    np.save(root / "train_label_vectors_intentonomy2020.npy", np.zeros((12740, 28)))  # the real train rows: too many
    with pytest.raises(DatasetError, match=r"expected shape \(40, 28\)"):
        adapter(root, tmp_path / "cache", labels="npy").load(16)


def test_missing_dataset_gives_one_clear_message(tmp_path):
    for root, detail in ((None, "no data root is configured"), (tmp_path, "has no intentonomy_train2020.json")):
        with pytest.raises(DatasetNotFoundError) as err:
            adapter(root, tmp_path / "cache").load(16)
        msg = str(err.value)
        assert detail in msg and "annotations/intentonomy_{train,val,test}2020.json" in msg and "low/<md5>.jpg" in msg
        assert "github.com/kmnp/intentonomy" in msg and "Unsplash" in msg
        assert '[paths.data] intentonomy = "/path/to/intentonomy"' in msg and "--data-root" in msg


def test_malformed_annotations_name_file_and_key(intentonomy_root, tmp_path):
    root = tmp_path / "bad"
    shutil.copytree(intentonomy_root, root)
    train_path = root / "annotations" / "intentonomy_train2020.json"
    train = json.loads(train_path.read_text())
    train["annotations"][3]["category_ids_softprob"] = [0.5] * 27
    train_path.write_text(json.dumps(train))
    with pytest.raises(DatasetError, match=r"intentonomy_train2020.json: annotations\[3\]: category_ids_softprob"):
        adapter(root, tmp_path / "cache").load(16)
    train_path.write_text("{not json")
    with pytest.raises(DatasetError, match="intentonomy_train2020.json: not a readable json"):
        adapter(root, tmp_path / "cache").load(16)
    test_path = root / "annotations" / "intentonomy_test2020.json"
    test = json.loads(test_path.read_text())
    test["categories"][5]["name"] = "Fun"
    shutil.copy(intentonomy_root / "annotations" / "intentonomy_train2020.json", train_path)
    test_path.write_text(json.dumps(test))
    with pytest.raises(DatasetError, match=r"categories do not match .*5: 'Fun' != 'EasyLife'"):
        adapter(root, tmp_path / "cache").load(16)


def test_missing_test_image_fails_and_missing_train_image_is_counted(intentonomy_root, tmp_path):
    root = tmp_path / "partial"
    shutil.copytree(intentonomy_root, root)
    train = json.loads((root / "annotations" / "intentonomy_train2020.json").read_text())["images"]
    (root / train[5]["filename"]).unlink()
    data = adapter(root, tmp_path / "cache").load(16)
    assert data.info["skipped"] == {"train": {"missing": 1, "corrupt": 0}} and len(data.splits["train"]) == N_TRAIN - 1
    assert train[5]["id"] not in data.splits["train"].ids
    test = json.loads((root / "annotations" / "intentonomy_test2020.json").read_text())["images"]
    (root / test[100]["filename"]).unlink()
    with pytest.raises(SplitIncompleteError, match=f"1 missing of 1217 test images .*{test[100]['filename']}"):
        adapter(root, tmp_path / "cache").load(16)


E2E_TOML = """
[suite]
backbone = "tiny-clip"
seeds = [0]
executor = "serial"   # the Ray executor gets the same DatasetData (its memmaps pickle as paths: test_data_cache)

[paths]
results = "results"
cache = "cache"

[engine]
progress = false
eval_batch_size = 512

[backbones.tiny-clip]
pretrained = "none"

[methods.intclip]
epochs = 1
batch_size = 16

[methods.linear-probe]
c_grid = [1.0]
refine_steps = 0
max_iter = 50
"""


@pytest.mark.slow
def test_bench_run_end_to_end(tmp_path):
    """40 train and the first 120 val / 120 test images of the real files: the full splits cost ~40 s of CPU
    inference on 2 cores and add nothing that the tests above do not check."""
    from bench.cli.app import app

    root = build_root(tmp_path / "data", keep=120)
    train = json.loads((root / "annotations" / "intentonomy_train2020.json").read_text())["images"]
    (root / train[0]["filename"]).unlink()  # a photo that could not be downloaded: skipped and counted
    config = tmp_path / "bench.toml"
    config.write_text(E2E_TOML)
    args = ["run", "--methods", "linear-probe,intclip", "--dataset", "intentonomy", "--config", str(config),
            "--data-root", str(root), "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    records = [json.loads(p.read_text()) for p in (tmp_path / "results" / "runs").glob("*/result.json")]
    assert sorted(r["method"]["name"] for r in records) == ["intclip", "linear-probe"]
    expected = adapter(root, tmp_path / "cache" / "datasets").load(96)
    assert expected.info["from_cache"]  # the run built the cache; this load only memory-maps it
    for r in records:
        ds = r["dataset"]
        assert ds["name"] == "intentonomy" and ds["manifest_sha256"] == expected.manifest_sha256
        assert ds["split_sizes"] == {"train": N_TRAIN - 1, "val": 120, "test": 120}
        assert ds["info"]["skipped"] == {"train": {"missing": 1, "corrupt": 0}}
        assert len(r["metrics"]["per_class"]["test"]["f1"]) == 28


def test_official_preprocessing_reads_the_released_codes_resize(tmp_path):
    """A method with preprocessing = "official" reads a copy decoded as torchvision's Resize((S, S)) does (PIL
    bilinear on the full decode); the other methods keep the configured decode; each copy is its own cache and the
    run ids say which one."""
    from bench.config import load_config
    from bench.pipeline.plan import plan_suite
    from bench.datasets.images import decode_image

    root = build_root(tmp_path / "data", n_train=8, keep=8)
    over = {
        "suite.methods": ["intclip-official", "dualcoop"], "suite.datasets": ["intentonomy"], "suite.seeds": [0],
        "paths.data": {"intentonomy": str(root)}, "paths.cache": str(tmp_path / "cache"), "paths.results": str(tmp_path / "r"),
        "backbones.tiny-clip.methods.intclip-official.preprocessing": "official",
    }
    plans, datasets = plan_suite(load_config(None, over))
    official, dual = (next(p for p in plans if p.method == m) for m in ("intclip-official", "dualcoop"))
    assert official.identity["dataset"]["config"]["resample"] == "bilinear" and not official.identity["dataset"]["config"]["draft"]
    assert dual.identity["dataset"]["config"]["resample"] == "bicubic" and dual.identity["dataset"]["config"]["draft"]
    assert official.data != dual.data and set(datasets) == {official.data, dual.data}
    first = json.loads((root / "annotations" / "intentonomy_val2020.json").read_text())["images"][0]
    raw = (root / first["filename"]).read_bytes()
    expected = np.asarray(Image.open(root / first["filename"]).convert("RGB").resize((96, 96), Image.Resampling.BILINEAR))
    assert np.array_equal(datasets[official.data].splits["val"].images[0], expected)
    assert np.array_equal(datasets[dual.data].splits["val"].images[0], decode_image(raw, 96, "bicubic", True)[2])
