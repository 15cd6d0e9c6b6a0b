"""Image emotion recognition (multiclass): EmotionROI (6 classes) and FI (8 classes).

Neither dataset ships a train/val/test split that bench can use as is, so each adapter makes a seeded, stratified
split once, writes it to a split file and reuses that file from then on (its path and sha256 are recorded in
``DatasetData.info`` and, through the manifest hash, in every result). Split files go to
``ROOT/bench_splits/`` when the data root is writable, else to ``<paths.cache>/datasets/<name>/splits-<root tag>/``;
an existing file is never rewritten (delete it to draw a new split). Within a class, images are ordered by
``sha256(f"{seed}/{name}")`` (EmotionROI: ``class/file.jpg`` as listed in training.txt; FI: the file name, so
flat and per-class layouts split alike), so the split depends on the seed and the names only (not on the
file-system order or the numpy version).

Class order is alphabetical (the order below); labels are ``int64 [N]``. Readable names are the class keys; the
one-sentence class descriptions and the polarity level of the hierarchy are the project's own
(``datasets/metadata/{emotionroi,fi}.json``).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from .base import SPLITS, ClassInfo
from .images import DatasetError, ImageDatasetConfig, ImageFileDataset, Listing, check_relative, read_metadata, stratified_assignment

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def _emotion_classes(name: str) -> list[ClassInfo]:
    meta = read_metadata(name)
    rows = sorted(meta["classes"], key=lambda c: c["id"])
    return [ClassInfo(c["key"], c["name"], c["sentence"], (c["polarity"],)) for c in rows]


def _fraction_tag(x: float) -> str:
    return f"{x:g}"


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _multiclass_listing(root: Path, assignment: list[tuple[str, str, int]], info: dict[str, Any]) -> Listing:
    """``[(split, path, class index)]`` -> a Listing (per split in the given order; ids are the paths)."""
    paths: dict[str, list[str]] = {s: [] for s in SPLITS}
    labels: dict[str, list[int]] = {s: [] for s in SPLITS}
    for split, path, label in assignment:
        paths[split].append(path)
        labels[split].append(label)
    return Listing(
        root,
        paths,
        {s: np.asarray(labels[s], dtype=np.int64) for s in SPLITS},
        {s: list(paths[s]) for s in SPLITS},
        info,
    )


class EmotionROI(ImageFileDataset):
    """EmotionROI (Peng et al., ICIP 2016): 1,980 images, 6 Ekman emotions, official training/testing lists."""

    name = "emotionroi"
    task = "multiclass"
    levels = ["polarity", "emotion"]
    layout_help = (
        "  ROOT/images/<class>/<file>.jpg                           (class: anger, disgust, fear, joy, sadness, surprise)\n"
        "  ROOT/training_testing_split/training.txt, testing.txt    (one 'class/file.jpg' per line)"
    )
    source_help = (
        "the EmotionROI release of Peng et al. (ICIP 2016, 'Where do emotions come from? Predicting the emotion "
        "stimuli map'), from the authors' download page; unpack it so that images/ and training_testing_split/ "
        "are in ROOT"
    )

    class Config(ImageDatasetConfig):
        val_fraction: float = Field(default=0.1, gt=0.0, lt=1.0)
        split_seed: int = 0

    config: Config

    def classes(self) -> list[ClassInfo]:
        return _emotion_classes("emotionroi")

    def _read_list(self, path: Path, keys: list[str]) -> list[tuple[str, int]]:
        if not path.is_file():
            raise self.not_found(f"{path} does not exist")
        out = []
        try:
            lines = path.read_text(encoding="utf-8-sig").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise DatasetError(f"{path}: not readable: {err}") from None
        for n, line in enumerate(lines, 1):
            item = line.strip().replace("\\", "/")
            if not item:
                continue
            cls = item.split("/", 1)[0]
            if "/" not in item or cls not in keys:
                raise DatasetError(f"{path}:{n}: expected 'class/file.jpg' with class in {keys}, got {line.strip()!r}")
            out.append((check_relative(item, f"{path}:{n}"), keys.index(cls)))
        return out

    def listing(self) -> Listing:
        root = self.require_root()
        if not (root / "images").is_dir():
            raise self.not_found(f"{root} has no images/ folder")
        keys = [c.key for c in self.classes()]
        split_dir = root / "training_testing_split"
        training = self._read_list(split_dir / "training.txt", keys)
        testing = self._read_list(split_dir / "testing.txt", keys)
        c = self.config
        filename = f"emotionroi_val_seed{c.split_seed}_frac{_fraction_tag(c.val_fraction)}.txt"

        def make() -> str:
            chosen = stratified_assignment(training, {"train": 1 - c.val_fraction, "val": c.val_fraction}, c.split_seed)
            return "".join(f"{p}\n" for p, _ in training if chosen[p] == "val")

        path, text, created = self.read_or_write_split_file(filename, make)
        val = [line.strip() for line in text.splitlines() if line.strip()]
        known = {p for p, _ in training}
        stray = [p for p in val if p not in known]
        if stray:
            raise DatasetError(f"{path}: lists {len(stray)} images that are not in training.txt (e.g. {stray[:3]}); "
                               "delete the file to draw the val split again")
        val_set = set(val)
        assignment = [("val" if p in val_set else "train", p, y) for p, y in training]
        assignment += [("test", p, y) for p, y in testing]
        rel = [(s, f"images/{p}", y) for s, p, y in assignment]
        info = {
            "split_file": str(path),
            "split_sha256": _sha256_text(text),
            "split_file_created": created,
            "split": {"val_fraction": c.val_fraction, "seed": c.split_seed, "val_from": "training.txt", "test": "testing.txt"},
        }
        return _multiclass_listing(root, rel, info)


FI_NAME = re.compile(r"^([a-z]+)_(\d+)\.[a-z]+$", re.IGNORECASE)


class FI(ImageFileDataset):
    """FI (You et al., AAAI 2016): 23,308 images, Mikels' 8 emotions; seeded stratified 80/5/15 split."""

    name = "fi"
    task = "multiclass"
    levels = ["polarity", "emotion"]
    layout_help = (
        "  ROOT/<class>_<n>.jpg   or   ROOT/<class>/<class>_<n>.jpg   (also under ROOT/images/)\n"
        "  class: amusement, anger, awe, contentment, disgust, excitement, fear, sadness"
    )
    source_help = (
        "the FI (Flickr and Instagram) emotion dataset of You et al. (AAAI 2016, 'Building a large scale dataset "
        "for image emotion recognition: the fine print and the benchmark'), from the authors' release"
    )

    class Config(ImageDatasetConfig):
        split_seed: int = 0
        fractions: tuple[float, float, float] = (0.80, 0.05, 0.15)

        @model_validator(mode="after")
        def _fractions_sum_to_one(self) -> "FI.Config":
            if any(f < 0 for f in self.fractions) or abs(sum(self.fractions) - 1.0) > 1e-6 or self.fractions[0] <= 0:
                raise ValueError(f"fractions (train, val, test) must be >= 0 and sum to 1, got {self.fractions}")
            return self

    config: Config

    def classes(self) -> list[ClassInfo]:
        return _emotion_classes("fi")

    def discover(self, root: Path, keys: list[str]) -> list[tuple[str, int]]:
        """Every ``<class>_<n>.<ext>`` image in ROOT, ROOT/<class>/, ROOT/images/ or ROOT/images/<class>/."""
        found: dict[str, tuple[str, int]] = {}
        for base in (root, root / "images"):
            if not base.is_dir():
                continue
            for folder in [base] + [base / k for k in keys]:
                if not folder.is_dir():
                    continue
                for f in folder.iterdir():
                    if f.suffix.lower() not in IMAGE_SUFFIXES or not f.is_file():
                        continue
                    m = FI_NAME.match(f.name)
                    cls = folder.name if folder.name in keys and folder != base else (m.group(1).lower() if m else None)
                    if cls not in keys:
                        continue
                    if m and m.group(1).lower() != cls:
                        raise DatasetError(f"{f}: file name says {m.group(1)!r} but it is in the {cls!r} folder")
                    rel = f.relative_to(root).as_posix()
                    if f.name in found:
                        raise DatasetError(f"{root}: {f.name} appears twice ({found[f.name][0]} and {rel})")
                    found[f.name] = (rel, keys.index(cls))
        return sorted(found.values())

    def listing(self) -> Listing:
        root = self.require_root()
        keys = [c.key for c in self.classes()]
        c = self.config
        tag = "-".join(f"{round(100 * f):g}" for f in c.fractions)
        filename = f"fi_seed{c.split_seed}_{tag}.txt"
        discovered = self.discover(root, keys)

        def make() -> str:
            if not discovered:  # raised before any split file is written
                raise self.not_found(f"{root} has no <class>_<n>.jpg images of the 8 FI classes")
            fr = {"train": c.fractions[0], "val": c.fractions[1], "test": c.fractions[2]}
            chosen = stratified_assignment(discovered, fr, c.split_seed, key=lambda p: p.rsplit("/", 1)[-1])
            return "".join(f"{chosen[p]}\t{p}\n" for p, _ in discovered)

        path, text, created = self.read_or_write_split_file(filename, make)
        assignment = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            split, _, rel = line.strip().partition("\t")
            if split not in SPLITS or not rel:
                raise DatasetError(f"{path}:{n}: expected '<train|val|test><TAB><path>', got {line.strip()!r}; "
                                   "delete the file to draw the split again")
            rel = check_relative(rel, f"{path}:{n}")
            name = rel.rsplit("/", 1)[-1]
            folder = rel.rsplit("/", 2)[-2] if "/" in rel else ""
            m = FI_NAME.match(name)
            cls = folder if folder in keys else (m.group(1).lower() if m else "")
            if cls not in keys:
                raise DatasetError(f"{path}:{n}: cannot tell the class of {rel!r}")
            assignment.append((split, rel, keys.index(cls)))
        unassigned = len({p for p, _ in discovered} - {p for _, p, _ in assignment})
        info = {
            "split_file": str(path),
            "split_sha256": _sha256_text(text),
            "split_file_created": created,
            "split": {"fractions": list(c.fractions), "seed": c.split_seed},
            "unassigned_images": unassigned,
        }
        return _multiclass_listing(root, assignment, info)
