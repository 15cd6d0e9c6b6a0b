"""The embedded synthetic-intentions dataset: determinism, splits, prevalence, rules, hierarchy, cache, captions."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
from pydantic import ValidationError

from bench.datasets import scenes as syn
from bench.datasets.base import DatasetData
from bench.datasets.scenes import make_scene
from bench.datasets.synthetic import SyntheticIntentions
from bench.tools import sight

SMALL = {"n_train": 40, "n_val": 12, "n_test": 16}


def _adapter(tmp_path, **overrides) -> SyntheticIntentions:
    cfg = SyntheticIntentions.Config(**{**SMALL, **overrides})
    return SyntheticIntentions(cfg, None, tmp_path)


@pytest.fixture(scope="module")
def default_data(tmp_path_factory) -> DatasetData:
    adapter = SyntheticIntentions(SyntheticIntentions.Config(), None, tmp_path_factory.mktemp("cache"))
    return adapter.load(96)


def labels(scene) -> set[str]:
    return {k for k, v in zip(syn.CLASS_KEYS, syn.labels_of(scene), strict=True) if v}


@pytest.mark.slow
def test_default_splits_shapes_and_ids(default_data):
    assert default_data.name == "synthetic" and default_data.task == "multilabel"
    assert default_data.num_classes == 12
    sizes = {"train": 1000, "val": 250, "test": 400}
    for split, n in sizes.items():
        sp = default_data.splits[split]
        assert sp.images.shape == (n, 96, 96, 3) and sp.images.dtype == np.uint8
        assert sp.labels.shape == (n, 12) and sp.labels.dtype == np.float32
        assert set(np.unique(sp.labels)) <= {0.0, 1.0}
        assert sp.ids[0] == f"{split}/000000" and sp.ids[123] == f"{split}/000123"
    # the three splits are different images
    assert not np.array_equal(default_data.splits["train"].images[:50], default_data.splits["val"].images[:50])


def test_prevalence_and_labels_per_image(default_data):
    for split in ("train", "test"):
        y = default_data.splits[split].labels
        prevalence = y.mean(0)
        bad = {k: round(float(p), 3) for k, p in zip(syn.CLASS_KEYS, prevalence, strict=True)
               if not 0.06 <= p <= 0.45}
        assert not bad, f"{split}: prevalence out of bounds {bad}"
        assert 1.5 <= y.sum(1).mean() <= 3.0
    y = np.concatenate([default_data.splits[s].labels for s in ("train", "val", "test")])
    assert ((y.mean(0) >= 0.08) & (y.mean(0) <= 0.45)).all(), y.mean(0)


def test_determinism_and_seed(tmp_path):
    a = _adapter(tmp_path / "a").load(96)
    b = _adapter(tmp_path / "b").load(96)
    c = _adapter(tmp_path / "c", seed=1).load(96)
    for split in ("train", "val", "test"):
        assert np.array_equal(a.splits[split].images, b.splits[split].images)
        assert np.array_equal(a.splits[split].labels, b.splits[split].labels)
    assert a.manifest_sha256 == b.manifest_sha256 and len(a.manifest_sha256) == 64
    assert c.manifest_sha256 != a.manifest_sha256
    assert not np.array_equal(a.splits["train"].images, c.splits["train"].images)


def test_split_streams_are_independent_of_sizes(tmp_path):
    # the val split does not depend on how many training images were drawn
    a = _adapter(tmp_path / "a").load(96)
    b = _adapter(tmp_path / "b", n_train=7).load(96)
    assert np.array_equal(a.splits["val"].images, b.splits["val"].images)
    assert a.manifest_sha256 != b.manifest_sha256


def test_resize_to_image_size(tmp_path):
    data = _adapter(tmp_path).load(64)
    assert data.splits["test"].images.shape == (16, 64, 64, 3)
    native = _adapter(tmp_path).load(96)
    assert np.array_equal(data.splits["test"].labels, native.splits["test"].labels)
    assert data.manifest_sha256 != native.manifest_sha256


def test_cache_is_reused(tmp_path, monkeypatch):
    adapter = _adapter(tmp_path)
    first = adapter.load(96)
    assert adapter.cache_path(96).is_file() and first.info["from_cache"] is False
    assert not list(tmp_path.glob("*.tmp"))

    def boom(*args, **kwargs):
        raise AssertionError("rendered again instead of reading the cache")

    monkeypatch.setattr(syn, "render", boom)
    second = _adapter(tmp_path).load(96)
    assert second.info["from_cache"] is True
    assert second.manifest_sha256 == first.manifest_sha256
    assert np.array_equal(second.splits["train"].images, first.splits["train"].images)


def test_corrupt_cache_is_regenerated(tmp_path):
    adapter = _adapter(tmp_path)
    adapter.cache_path(96).parent.mkdir(parents=True, exist_ok=True)
    adapter.cache_path(96).write_bytes(b"not an npz")
    data = adapter.load(96)
    assert data.info["from_cache"] is False and len(data.splits["train"]) == 40


def test_config_validation():
    with pytest.raises(ValidationError):
        SyntheticIntentions.Config(n_train=0)
    with pytest.raises(ValidationError):
        SyntheticIntentions.Config(render_size=-96)
    with pytest.raises(ValidationError):
        SyntheticIntentions.Config(seed=-1)
    with pytest.raises(ValidationError):
        SyntheticIntentions.Config(n_tain=10)  # unknown keys are rejected


def test_hierarchy(default_data):
    assert default_data.levels == ["coarse", "middle", "fine"]
    classes = default_data.classes
    assert [c.key for c in classes] == list(syn.CLASS_KEYS) and len(set(syn.CLASS_KEYS)) == 12
    parent_of_middle: dict[str, str] = {}
    for c in classes:
        assert len(c.hierarchy) == 2 and c.name and c.sentence.endswith(".")
        coarse, middle = c.hierarchy
        assert parent_of_middle.setdefault(middle, coarse) == coarse, f"{middle} has two parents"
        # the sentence integrates the hierarchy: it names the coarse and middle levels
        assert coarse in c.sentence.lower() and middle in c.sentence.lower(), c.sentence
    assert len(parent_of_middle) == 6 and len(set(parent_of_middle.values())) == 3
    fine_per_middle = {m: sum(c.hierarchy[1] == m for c in classes) for m in parent_of_middle}
    assert set(fine_per_middle.values()) == {2}


@pytest.mark.slow
def test_every_rule_combines_attributes():
    # no intention is decided by the presence of one kind of object: for each class, some scene containing any
    # given (shape, colour) object lacks the label
    rng = syn.scene_stream(7, 99)
    scenes = [syn.random_scene(rng) for _ in range(3000)]
    y = np.stack([syn.labels_of(s) for s in scenes])
    for j, key in enumerate(syn.CLASS_KEYS):
        for shape in syn.SHAPES:
            for colour in syn.COLOURS:
                has = [y[i, j] for i, s in enumerate(scenes)
                       if any(o.shape == shape and o.colour == colour for o in s.objects)]
                assert 0 < len(has) and min(has) == 0, (key, shape, colour)


# ---- each rule on hand-built scenes ------------------------------------------------------------------------


def test_rule_solitude():
    assert "solitude" in labels(make_scene([("star", "red", "small")]))
    assert "solitude" not in labels(make_scene([("star", "red", "large")]))
    assert "solitude" not in labels(make_scene([("star", "red", "small"), ("star", "red", "small")]))


def test_rule_serenity():
    assert "serenity" in labels(make_scene([("circle", "blue", "large"), ("square", "green", "small")],
                                           background="gradient"))
    assert "serenity" not in labels(make_scene([("circle", "blue", "large"), ("square", "red", "small")]))
    assert "serenity" not in labels(make_scene([("circle", "blue", "large")], background="stripes"))
    assert "serenity" not in labels(make_scene([("circle", "blue", "small")] * 3))


def test_rule_discipline():
    row = [("triangle", "red", "small"), ("triangle", "blue", "large"), ("triangle", "green", "small")]
    assert "discipline" in labels(make_scene(row, layout="row"))
    assert "discipline" not in labels(make_scene(row, layout="cluster"))
    assert "discipline" not in labels(make_scene(row[:2] + [("star", "green", "small")], layout="row"))
    assert "discipline" not in labels(make_scene(row[:2], layout="row"))


def test_rule_conformity():
    same = [("circle", "yellow", "small"), ("cross", "yellow", "small"), ("star", "yellow", "small")]
    assert "conformity" in labels(make_scene(same))
    assert "conformity" not in labels(make_scene(same[:2] + [("star", "yellow", "large")]))
    assert "conformity" not in labels(make_scene(same[:2] + [("star", "blue", "small")]))
    assert "conformity" not in labels(make_scene(same[:2]))


def test_rule_festivity():
    assert "festivity" in labels(make_scene([("circle", "red", "small"), ("circle", "blue", "small"),
                                             ("circle", "green", "small")]))
    assert "festivity" not in labels(make_scene([("circle", "red", "small"), ("circle", "blue", "small"),
                                                 ("circle", "blue", "large")]))


def test_rule_playfulness():
    shapes = [("circle", "red", "small"), ("star", "red", "small"), ("cross", "red", "small")]
    assert "playfulness" in labels(make_scene(shapes, background="dots"))
    assert "playfulness" in labels(make_scene(shapes, background="stripes"))
    assert "playfulness" not in labels(make_scene(shapes, background="plain"))
    assert "playfulness" not in labels(make_scene(shapes[:2] + [("star", "red", "large")], background="dots"))


def test_rule_passion():
    assert "passion" in labels(make_scene([("square", "red", "small"), ("star", "orange", "large")]))
    assert "passion" not in labels(make_scene([("square", "red", "small")]))
    assert "passion" not in labels(make_scene([("square", "red", "small"), ("star", "purple", "large")]))


def test_rule_adventure():
    four = [("circle", "red", "small"), ("square", "blue", "small"), ("star", "green", "small"),
            ("cross", "yellow", "small")]
    assert "adventure" in labels(make_scene(four, layout="scattered"))
    assert "adventure" not in labels(make_scene(four, layout="row"))
    assert "adventure" not in labels(make_scene(four[:3], layout="scattered"))


def test_rule_belonging():
    three = [("circle", "red", "large"), ("square", "blue", "small"), ("star", "green", "small")]
    assert "belonging" in labels(make_scene(three, layout="cluster"))
    assert "belonging" not in labels(make_scene(three, layout="scattered"))
    assert "belonging" not in labels(make_scene(three[:2], layout="cluster"))


def test_rule_companionship():
    assert "companionship" in labels(make_scene([("cross", "red", "small"), ("cross", "blue", "large")]))
    assert "companionship" not in labels(make_scene([("cross", "red", "small"), ("star", "red", "small")]))
    assert "companionship" not in labels(make_scene([("cross", "red", "small")] * 3))


def test_rule_leadership():
    assert "leadership" in labels(make_scene([("circle", "red", "large"), ("circle", "red", "small"),
                                              ("star", "blue", "small")]))
    assert "leadership" not in labels(make_scene([("circle", "red", "large"), ("circle", "red", "large"),
                                                  ("star", "blue", "small")]))
    assert "leadership" not in labels(make_scene([("circle", "red", "large"), ("circle", "red", "small")]))


def test_rule_individuality():
    assert "individuality" in labels(make_scene([("circle", "green", "small"), ("star", "green", "large"),
                                                 ("square", "green", "small"), ("cross", "red", "small")]))
    assert "individuality" not in labels(make_scene([("circle", "green", "small")] * 4))
    assert "individuality" not in labels(make_scene([("circle", "green", "small"), ("circle", "green", "small"),
                                                     ("circle", "red", "small"), ("circle", "blue", "small")]))
    assert "individuality" not in labels(make_scene([("circle", "green", "small"), ("circle", "red", "small")]))


# ---- scenes, rendering, captions -----------------------------------------------------------------------------


@pytest.mark.parametrize("layout", syn.LAYOUTS)
def test_layouts_place_objects_without_overlap(layout):
    rng = np.random.default_rng(3)
    for _ in range(30):
        scene = syn.Scene("plain", "white", layout, syn.place(
            [("circle", "red", "large")] * int(rng.integers(1, 6)), layout, rng))
        pts = [(o.x * 96, o.y * 96) for o in scene.objects]
        for i in range(len(pts)):
            for j in range(i):
                assert np.hypot(pts[i][0] - pts[j][0], pts[i][1] - pts[j][1]) >= 17
        if layout == "row":
            assert len({o.y for o in scene.objects}) == 1


def test_render_shows_the_objects():
    scene = make_scene([("square", "red", "large")], background="plain", bg_colour="white")
    img = syn.render(scene, 96)
    assert img.shape == (96, 96, 3) and img.dtype == np.uint8
    red = (img == np.array(syn.COLOURS["red"], dtype=np.uint8)).all(-1)
    assert 200 < red.sum() < 600  # a ~19 px square
    assert np.array_equal(img, syn.render(scene, 96))
    assert syn.render(scene, 48).shape == (48, 48, 3)
    for background in syn.BACKGROUNDS:
        syn.render(make_scene([("star", "blue", "small")], background=background, bg_colour="black"), 96)


def test_captions_describe_what_is_visible():
    rng = np.random.default_rng(0)
    for _ in range(100):
        scene = syn.random_scene(rng)
        text = sight.caption(scene, rng)
        for key in syn.CLASS_KEYS:
            assert key not in text
        if text.count(" ") < 5:
            continue
        words = set(text.replace(",", " ").replace(".", " ").replace(":", " ").split())
        mentioned_colours = {c for c in syn.COLOURS if c in words}
        mentioned_shapes = {s for s in syn.SHAPES if s in words or sight.PLURAL[s] in words}
        assert mentioned_colours <= scene.colours and mentioned_shapes <= scene.shapes, (text, scene)
        assert mentioned_colours or mentioned_shapes or sight.NUMBER_WORDS[scene.n] in words, text

    scene = make_scene([("circle", "red", "large"), ("star", "blue", "small")], layout="row",
                       background="stripes", bg_colour="grey")
    texts = [sight.caption(scene, np.random.default_rng(i)) for i in range(40)]
    listed = [t for t in texts if "star," in t or "star " in t or "star." in t]  # the object list (not "stars")
    assert listed and all("red circle" in t and "blue star" in t for t in listed)
    assert any("circles and stars" in t or "stars and circles" in t for t in texts)
    assert any("row" in t for t in texts) and any("striped" in t and "grey" in t for t in texts)
    assert len(set(texts)) > 5  # template variety
