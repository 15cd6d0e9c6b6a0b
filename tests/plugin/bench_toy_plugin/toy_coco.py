"""toy-coco: generated multi-label scenes (a coloured square per present class), classes from toy_coco.json."""

import hashlib
import json
from pathlib import Path

import numpy as np
from pydantic import PositiveInt

from bench.datasets.base import ClassInfo, DatasetAdapter, DatasetConfig, DatasetData, Split


class ToyCOCO(DatasetAdapter):
    name = "toy-coco"
    task = "multilabel"
    main_metric = "mAP"  # what its tables rank by and its leaderboard tracks

    class Config(DatasetConfig):
        n_train: PositiveInt = 48
        n_val: PositiveInt = 24
        n_test: PositiveInt = 24
        seed: int = 0

    def load(self, image_size: int) -> DatasetData:
        meta = json.loads(Path(__file__).with_name("toy_coco.json").read_text())
        classes = [ClassInfo(c["key"], c["name"], c["sentence"]) for c in meta["classes"]]
        rng = np.random.default_rng(self.config.seed)
        c = self.config
        splits, digest = {}, hashlib.sha256(b"toy-coco/1")
        for split, n in (("train", c.n_train), ("val", c.n_val), ("test", c.n_test)):
            labels = (rng.random((n, len(classes))) < 0.35).astype(np.float32)
            labels[np.arange(n), rng.integers(0, len(classes), n)] = 1.0  # every image shows something
            images = np.full((n, image_size, image_size, 3), 128, np.uint8)
            side = image_size // 4
            for i, k in zip(*np.nonzero(labels)):
                y, x = rng.integers(0, image_size - side, 2)
                images[i, y : y + side, x : x + side] = meta["classes"][k]["rgb"]
            splits[split] = Split(images, labels, [f"{split}-{i}" for i in range(n)])
            digest.update(images.tobytes() + labels.tobytes())
        return DatasetData(self.name, self.task, classes, ["fine"], splits, digest.hexdigest())
