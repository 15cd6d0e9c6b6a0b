"""Intentonomy (Jia et al., CVPR 2021): 28 multilabel intent classes on Unsplash photos.

Layout under the data root (``[paths.data] intentonomy``)::

    ROOT/annotations/intentonomy_{train,val,test}2020.json     (or directly in ROOT)
    ROOT/<filename>                                            filename as in the json, e.g. low/<md5>.jpg
    ROOT/annotations/{train,val,test}_label_vectors_intentonomy2020.npy   (only with labels = "npy")

The official json is COCO-like: ``images[{id (md5), filename, original_id, unsplash_url}]``,
``annotations[{id, image_id, category_ids}]`` (val/test) or ``category_ids_softprob`` (train: 28 floats, the
fraction of the 3 annotators who chose each class) and ``categories[{id, name}]``.

* **Class order** = category ids 0..27; the categories in every json must match the names in the shipped metadata
  (``datasets/metadata/intentonomy.json``: readable names, coarse/middle hierarchy and the HCI sentences that the
  official IntCLIP code uses in place of class names).
* **Row order** = the order of the json's ``images`` list (labels joined by ``image_id``). In the official val and
  test files the ``annotations`` list has the same order, and the label-vector ``.npy`` files that IntCLIP and
  HLEG use are row for row in that order (checked by ``tests/test_datasets_real.py``).
* **Train labels** are binarised: class c is positive when ``softprob[c] > train_label_threshold`` (default 0:
  any annotator chose it, as the official code does). A train annotation without soft labels falls back to its
  ``category_ids``. ``labels = "npy"`` takes every split's labels from the ``.npy`` files instead (rows in json
  ``images`` order; the json still lists the image files).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from .base import SPLITS, ClassInfo
from .images import DatasetError, ImageDatasetConfig, ImageFileDataset, Listing, check_relative, read_metadata

NUM_CLASSES = 28
ANNOTATION = "intentonomy_{split}2020.json"
LABEL_VECTORS = "{split}_label_vectors_intentonomy2020.npy"


def class_infos() -> tuple[list[ClassInfo], list[dict[str, Any]]]:
    """The 28 classes in id order (key, name, HCI sentence, hierarchy) and their rows of the packaged metadata."""
    meta = read_metadata("intentonomy")
    rows = sorted(meta["classes"], key=lambda c: c["id"])
    if [c["id"] for c in rows] != list(range(NUM_CLASSES)):
        raise DatasetError("datasets/metadata/intentonomy.json: class ids must be 0..27")
    infos = [ClassInfo(c["key"], c["name"], c["hci_sentence"], (c["coarse"], c["middle"])) for c in rows]
    return infos, rows


class Intentonomy(ImageFileDataset):
    name = "intentonomy"
    task = "multilabel"
    levels = ["coarse", "middle", "fine"]
    layout_help = (
        "  ROOT/annotations/intentonomy_{train,val,test}2020.json   (or the three files directly in ROOT)\n"
        "  ROOT/low/<md5>.jpg                                       (each image at ROOT/<its json 'filename'>)"
    )
    source_help = (
        "the annotation json files from the official Intentonomy repository (github.com/kmnp/intentonomy); the "
        "images are Unsplash photos, fetched from each entry's 'unsplash_url' by `bench data download --dataset "
        "intentonomy --root ROOT` (or that repository's script); images that can no longer be downloaded are listed "
        "in ROOT/download-report.json, skipped in train and counted"
    )

    class Config(ImageDatasetConfig):
        labels: Literal["json", "npy"] = "json"
        train_label_threshold: float = Field(default=0.0, ge=0.0, lt=1.0)
        images_dir: str = Field(default="", description="folder under the root that the json filenames are relative to")

    config: Config

    def classes(self) -> list[ClassInfo]:
        return class_infos()[0]

    def _find(self, root: Path, filename: str) -> Path | None:
        for candidate in (root / "annotations" / filename, root / filename):
            if candidate.is_file():
                return candidate
        return None

    def listing(self) -> Listing:
        root = self.require_root()
        files = {s: self._find(root, ANNOTATION.format(split=s)) for s in SPLITS}
        absent = [ANNOTATION.format(split=s) for s, p in files.items() if p is None]
        if absent:
            raise self.not_found(f"{root} has no {', '.join(absent)} (looked in {root / 'annotations'} and {root})")
        keys = [c.key for c in self.classes()]
        images_dir = self.config.images_dir.strip("/")
        prefix = check_relative(images_dir, "datasets.intentonomy.images_dir") + "/" if images_dir else ""
        paths, labels, ids = {}, {}, {}
        for split in SPLITS:
            entries, split_labels = parse_annotations(files[split], split, keys, self.config.train_label_threshold)
            paths[split] = [prefix + filename for _, filename in entries]
            ids[split] = [image_id for image_id, _ in entries]
            labels[split] = split_labels
        info: dict[str, Any] = {
            "annotations": {s: str(p) for s, p in files.items()},
            "label_source": self.config.labels,
            "train_label_threshold": self.config.train_label_threshold,
        }
        if self.config.labels == "npy":
            for split in SPLITS:
                path = self._find(root, LABEL_VECTORS.format(split=split))
                if path is None:
                    raise self.not_found(f"labels = \"npy\" but {root} has no {LABEL_VECTORS.format(split=split)}")
                labels[split] = read_label_vectors(path, len(ids[split]))
            info["label_vectors"] = {s: str(self._find(root, LABEL_VECTORS.format(split=s))) for s in SPLITS}
        return Listing(root, paths, labels, ids, info)


def read_label_vectors(path: Path, n: int) -> np.ndarray:
    """A ``{split}_label_vectors_intentonomy2020.npy`` file as ``float32 [n, 28]`` multi-hot."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DatasetError(f"{path}: not a readable .npy file: {err}") from None
    if arr.ndim != 2 or arr.shape != (n, NUM_CLASSES):
        raise DatasetError(f"{path}: expected shape ({n}, {NUM_CLASSES}) to match the json's images, got {arr.shape}")
    if not np.isin(arr, (0, 1)).all():
        raise DatasetError(f"{path}: label vectors must be 0/1")
    return arr.astype(np.float32)


def parse_annotations(
    path: Path, split: str, class_keys: list[str], threshold: float = 0.0
) -> tuple[list[tuple[str, str]], np.ndarray]:
    """One official json: ``[(image id, filename)]`` in ``images`` order and ``float32 [N, 28]`` labels.

    Every malformed piece raises :class:`DatasetError` naming the file and the json key.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise DatasetError(f"{path}: not a readable json file: {err}") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a json object with images, annotations and categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(f"{path}: key {key!r} is missing or not a list")
    try:
        cats = {int(c["id"]): str(c["name"]) for c in data["categories"]}
    except (KeyError, TypeError, ValueError):
        raise DatasetError(f"{path}: categories: every entry needs an integer 'id' and a 'name'") from None
    expected = dict(enumerate(class_keys))
    if cats != expected:
        diff = [f"{i}: {cats.get(i)!r} != {expected.get(i)!r}" for i in sorted(set(cats) | set(expected)) if cats.get(i) != expected.get(i)]
        raise DatasetError(f"{path}: categories do not match the Intentonomy classes (id: file != expected): {'; '.join(diff[:5])}")

    entries: list[tuple[str, str]] = []
    seen: set[str] = set()
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict) or "id" not in img or "filename" not in img:
            raise DatasetError(f"{path}: images[{i}]: needs 'id' and 'filename'")
        image_id = str(img["id"])
        if image_id in seen:
            raise DatasetError(f"{path}: images[{i}]: duplicate image id {image_id!r}")
        seen.add(image_id)
        entries.append((image_id, check_relative(str(img["filename"]), f"{path}: images[{i}].filename")))

    by_image: dict[str, np.ndarray] = {}
    for i, ann in enumerate(data["annotations"]):
        where = f"{path}: annotations[{i}]"
        if not isinstance(ann, dict) or "image_id" not in ann:
            raise DatasetError(f"{where}: needs 'image_id'")
        image_id = str(ann["image_id"])
        if image_id not in seen:
            raise DatasetError(f"{where}: image_id {image_id!r} is not in images")
        if image_id in by_image:
            raise DatasetError(f"{where}: a second annotation for image {image_id!r}")
        row = np.zeros(NUM_CLASSES, dtype=np.float32)
        soft = ann.get("category_ids_softprob")
        if soft is not None:
            try:
                probs = np.asarray(soft, dtype=np.float64)
            except (TypeError, ValueError):
                raise DatasetError(f"{where}: category_ids_softprob must be {NUM_CLASSES} numbers") from None
            if probs.shape != (NUM_CLASSES,) or not np.isfinite(probs).all() or (probs < 0).any() or (probs > 1).any():
                raise DatasetError(f"{where}: category_ids_softprob must be {NUM_CLASSES} numbers in [0, 1], got shape {probs.shape}")
            row[probs > threshold] = 1.0
        elif "category_ids" in ann:
            ids = ann["category_ids"]
            if not isinstance(ids, list) or not all(isinstance(c, int) and 0 <= c < NUM_CLASSES for c in ids):
                raise DatasetError(f"{where}: category_ids must be a list of class ids 0..{NUM_CLASSES - 1}, got {ids!r}")
            row[ids] = 1.0
        else:
            raise DatasetError(f"{where}: needs 'category_ids'" + (" or 'category_ids_softprob'" if split == "train" else ""))
        by_image[image_id] = row
    unlabelled = [image_id for image_id, _ in entries if image_id not in by_image]
    if unlabelled:
        raise DatasetError(f"{path}: {len(unlabelled)} images have no annotation (e.g. {unlabelled[:3]})")
    labels = np.stack([by_image[image_id] for image_id, _ in entries]) if entries else np.zeros((0, NUM_CLASSES), np.float32)
    return entries, labels
