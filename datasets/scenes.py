"""The synthetic scene world behind the embedded default dataset: what a scene is, the 12 intention rules over it,
how scenes are sampled from a seed, and how they are drawn.

A *scene* is a background (plain, stripes, dots or gradient, in white, grey or black), one to five objects (a
shape, a colour and a size each) and a layout (scattered, row or cluster). :func:`render` draws it with PIL. The
12 "intention" labels are not objects: each is a rule over the scene that combines at least two attributes
(count, colours, shapes, sizes, layout, background), listed in :data:`INTENTIONS` under a 3-level hierarchy
(3 coarse -> 6 middle -> 12 fine) with one sentence per class that integrates the hierarchy, in the style of
IntCLIP's HCI sentences.

Splits come from independent random streams derived from the seed (:func:`scene_stream`); the tiny CLIP's
pretraining (:mod:`bench.tools.pretrain_tiny_clip`) samples its scenes from other streams, so it never sees a
dataset image, and learns from captions that describe only what is visible (:mod:`bench.tools.sight`), never an
intention. The dataset adapter is :mod:`bench.datasets.synthetic`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from .base import ClassInfo

# Bump whenever the sampler, the renderer or the rules change: it is part of the cache key and of the manifest
# hash, so results from another generator are never merged with these.
GENERATOR_VERSION = "1"

# --------------------------------------------------------------------------------------------------------------
# Vocabulary of the scenes
# --------------------------------------------------------------------------------------------------------------

SHAPES = ("circle", "square", "triangle", "star", "cross")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "green": (30, 165, 60),
    "blue": (35, 85, 235),
    "yellow": (245, 215, 25),
    "purple": (150, 55, 200),
    "orange": (250, 135, 20),
}
WARM = frozenset({"red", "orange", "yellow"})
COOL = frozenset({"green", "blue", "purple"})
SIZES = ("small", "large")
RADIUS = {"small": 6.0, "large": 11.0}  # in pixels of a 96 px canvas; everything scales with the render size
LAYOUTS = ("scattered", "row", "cluster")
BACKGROUNDS = ("plain", "stripes", "dots", "gradient")
PATTERNED = frozenset({"stripes", "dots"})
QUIET = frozenset({"plain", "gradient"})
# Background tone -> (base colour, pattern/gradient colour). Neutral tones, so every object colour stays visible.
BG_COLOURS: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "white": ((242, 242, 238), (196, 196, 192)),
    "grey": ((140, 140, 140), (190, 190, 190)),
    "black": ((28, 28, 32), (85, 85, 92)),
}
CANVAS = 96.0  # the unit canvas the sampler places objects on


@dataclass(frozen=True)
class SceneObject:
    """One object: what it is and where its centre is, as fractions of the canvas side."""

    shape: str
    colour: str
    size: str
    x: float
    y: float


@dataclass(frozen=True)
class Scene:
    background: str
    bg_colour: str
    layout: str
    objects: tuple[SceneObject, ...]

    @property
    def n(self) -> int:
        return len(self.objects)

    @property
    def colours(self) -> set[str]:
        return {o.colour for o in self.objects}

    @property
    def shapes(self) -> set[str]:
        return {o.shape for o in self.objects}

    def count(self, size: str) -> int:
        return sum(o.size == size for o in self.objects)


# --------------------------------------------------------------------------------------------------------------
# The intentions: one readable table of (hierarchy, name, sentence, rule)
# --------------------------------------------------------------------------------------------------------------


def _odd_one_out(s: Scene) -> bool:
    counts = sorted(Counter(o.colour for o in s.objects).values())
    return s.n >= 3 and counts == [1, s.n - 1]


@dataclass(frozen=True)
class Intention:
    key: str
    name: str
    coarse: str
    middle: str
    sentence: str
    rule: str  # the rule in words (documentation and reports)
    holds: Callable[[Scene], bool]


INTENTIONS: tuple[Intention, ...] = (
    # ---- harmony / calm
    Intention("solitude", "Solitude", "harmony", "calm",
              "Seeking harmony in calm solitude: a single small presence alone in open space.",
              "exactly one object, and it is small",
              lambda s: s.n == 1 and s.objects[0].size == "small"),
    Intention("serenity", "Serenity", "harmony", "calm",
              "Seeking harmony through a calm, serene mood of few cool colours on a quiet background.",
              "one or two objects, all green/blue/purple, on a plain or gradient background",
              lambda s: s.n <= 2 and s.colours <= COOL and s.background in QUIET),
    # ---- harmony / order
    Intention("discipline", "Discipline", "harmony", "order",
              "Seeking harmony through order and discipline: identical forms lined up in a row.",
              "at least three objects in a row, all of the same shape",
              lambda s: s.n >= 3 and s.layout == "row" and len(s.shapes) == 1),
    Intention("conformity", "Conformity", "harmony", "order",
              "Seeking harmony through order and conformity: many things that all look alike in colour and size.",
              "at least three objects, all of the same colour and the same size",
              lambda s: s.n >= 3 and len(s.colours) == 1 and len({o.size for o in s.objects}) == 1),
    # ---- vitality / celebration
    Intention("festivity", "Festivity", "vitality", "celebration",
              "Expressing vitality through celebration: a festive crowd of many different colours.",
              "at least three objects of at least three distinct colours",
              lambda s: s.n >= 3 and len(s.colours) >= 3),
    Intention("playfulness", "Playfulness", "vitality", "celebration",
              "Expressing vitality through playful celebration: varied shapes on a lively patterned background.",
              "at least three distinct shapes on a striped or dotted background",
              lambda s: len(s.shapes) >= 3 and s.background in PATTERNED),
    # ---- vitality / energy
    Intention("passion", "Passion", "vitality", "energy",
              "Expressing vitality through energy and passion in warm colours only.",
              "at least two objects, all red/orange/yellow",
              lambda s: s.n >= 2 and s.colours <= WARM),
    Intention("adventure", "Adventure", "vitality", "energy",
              "Expressing vitality through energy and adventure: many things spread out to explore.",
              "at least four objects, scattered",
              lambda s: s.n >= 4 and s.layout == "scattered"),
    # ---- connection / togetherness
    Intention("belonging", "Belonging", "connection", "togetherness",
              "Seeking connection and togetherness by belonging to a close group.",
              "at least three objects, clustered",
              lambda s: s.n >= 3 and s.layout == "cluster"),
    Intention("companionship", "Companionship", "connection", "togetherness",
              "Seeking connection and togetherness through companionship: a pair of kindred forms.",
              "exactly two objects, of the same shape",
              lambda s: s.n == 2 and len(s.shapes) == 1),
    # ---- connection / distinction
    Intention("leadership", "Leadership", "connection", "distinction",
              "Seeking connection through distinction by leading: one large figure ahead of smaller ones.",
              "at least three objects, exactly one of them large",
              lambda s: s.n >= 3 and s.count("large") == 1),
    Intention("individuality", "Individuality", "connection", "distinction",
              "Seeking connection through distinction by being oneself: one differs in colour from the rest.",
              "at least three objects; all share one colour except exactly one",
              _odd_one_out),
)
LEVELS = ["coarse", "middle", "fine"]
CLASS_KEYS = tuple(i.key for i in INTENTIONS)


def labels_of(scene: Scene) -> np.ndarray:
    """The multi-hot ``float32 [12]`` label vector of a scene, in :data:`INTENTIONS` order."""
    return np.array([i.holds(scene) for i in INTENTIONS], dtype=np.float32)


def class_infos() -> list[ClassInfo]:
    return [ClassInfo(i.key, i.name, i.sentence, (i.coarse, i.middle)) for i in INTENTIONS]


# --------------------------------------------------------------------------------------------------------------
# Sampling scenes
# --------------------------------------------------------------------------------------------------------------

# Random stream ids (numpy SeedSequence spawn keys): the dataset splits, the tiny CLIP's pretraining and its
# zero-shot evaluation draw from distinct streams for any seed, so they never share a scene by construction.
STREAMS = {"train": 0, "val": 1, "test": 2, "pretrain": 1_000_003, "sight-eval": 2_000_003}

N_OBJECTS_P = (0.18, 0.2, 0.22, 0.2, 0.2)  # P(n = 1..5)
COLOUR_SCHEMES = {"mixed": 0.4, "uniform": 0.3, "odd": 0.15, "warm": 0.075, "cool": 0.075}
SAME_SHAPE_P = 0.5
SAME_SIZE_P = 0.35
LARGE_P = 0.4


def scene_stream(seed: int, stream: str | int) -> np.random.Generator:
    """An independent numpy Generator for (seed, stream); streams are named in :data:`STREAMS`."""
    key = STREAMS[stream] if isinstance(stream, str) else int(stream)
    return np.random.default_rng(np.random.SeedSequence(entropy=int(seed), spawn_key=(key,)))


def _choice(rng: np.random.Generator, options: Sequence[str], p: Sequence[float] | None = None) -> str:
    return options[int(rng.choice(len(options), p=p))]


def _sample_colours(rng: np.random.Generator, n: int) -> list[str]:
    names = list(COLOURS)
    scheme = _choice(rng, list(COLOUR_SCHEMES), list(COLOUR_SCHEMES.values()))
    if scheme == "uniform" or (scheme == "odd" and n < 3):
        return [_choice(rng, names)] * n
    if scheme == "odd":
        main, odd = rng.choice(len(names), size=2, replace=False)
        colours = [names[main]] * n
        colours[int(rng.integers(n))] = names[odd]
        return colours
    pool = sorted(WARM) if scheme == "warm" else sorted(COOL) if scheme == "cool" else names
    return [_choice(rng, pool) for _ in range(n)]


def place(
    items: Sequence[tuple[str, str, str]], layout: str, rng: np.random.Generator
) -> tuple[SceneObject, ...]:
    """Give each (shape, colour, size) a position that realises ``layout`` without overlaps.

    row: centres on one horizontal line, evenly spaced over the width (large objects shrink a little when five
    share a row); cluster: every object touches the group; scattered: well apart over the whole canvas.
    """
    n = len(items)
    radii = [RADIUS[size] for _, _, size in items]
    if layout == "row":
        spacing = CANVAS / n
        y = float(rng.uniform(22, CANVAS - 22))
        xs = [spacing * (i + 0.5) for i in range(n)]
        return tuple(
            SceneObject(s, c, z, x / CANVAS, y / CANVAS) for (s, c, z), x in zip(items, xs, strict=True)
        )
    for _attempt in range(200):
        pts: list[tuple[float, float]] = []
        for i, r in enumerate(radii):
            for _try in range(100):
                if layout == "cluster" and pts:
                    j = int(rng.integers(len(pts)))
                    ang = rng.uniform(0, 2 * math.pi)
                    d = radii[j] + r + rng.uniform(1.0, 3.0)
                    x, y = pts[j][0] + d * math.cos(ang), pts[j][1] + d * math.sin(ang)
                    gap = 1.0
                else:
                    lo = r + 2 if layout == "scattered" else 24
                    x, y = rng.uniform(lo, CANVAS - lo, size=2)
                    gap = 10.0
                if not (r + 1 <= x <= CANVAS - r - 1 and r + 1 <= y <= CANVAS - r - 1):
                    continue
                if all(math.hypot(x - px, y - py) >= r + radii[k] + gap for k, (px, py) in enumerate(pts)):
                    pts.append((float(x), float(y)))
                    break
            else:
                break
        if len(pts) < n:
            continue
        if layout == "scattered" and n >= 2 and max(p[1] for p in pts) - min(p[1] for p in pts) < 18:
            continue  # would read as a row
        return tuple(
            SceneObject(s, c, z, x / CANVAS, y / CANVAS) for (s, c, z), (x, y) in zip(items, pts, strict=True)
        )
    raise RuntimeError(f"could not place {n} objects in a {layout} layout")  # pragma: no cover


def random_scene(rng: np.random.Generator, n_objects: int | None = None) -> Scene:
    """Sample one scene (with ``n_objects`` objects if given). Colour schemes (uniform, odd-one-out, warm, cool),
    same-shape and same-size scenes are drawn more often than chance, so every intention has a useful prevalence."""
    n = int(rng.choice(5, p=N_OBJECTS_P)) + 1 if n_objects is None else int(n_objects)
    if not 1 <= n <= 5:
        raise ValueError(f"a scene has 1 to 5 objects, not {n}")
    colours = _sample_colours(rng, n)
    if rng.random() < SAME_SHAPE_P:
        shapes = [_choice(rng, SHAPES)] * n
    else:
        shapes = [_choice(rng, SHAPES) for _ in range(n)]
    if rng.random() < SAME_SIZE_P:
        sizes = [_choice(rng, SIZES)] * n
    else:
        sizes = ["large" if rng.random() < LARGE_P else "small" for _ in range(n)]
    layout = _choice(rng, LAYOUTS)
    background = _choice(rng, BACKGROUNDS)
    bg_colour = _choice(rng, list(BG_COLOURS))
    objects = place(list(zip(shapes, colours, sizes, strict=True)), layout, rng)
    return Scene(background, bg_colour, layout, objects)


def make_scene(
    objects: Sequence[tuple[str, str, str]],
    layout: str = "scattered",
    background: str = "plain",
    bg_colour: str = "white",
    seed: int = 0,
) -> Scene:
    """Build a scene by hand from (shape, colour, size) triples (tests, examples); positions follow ``layout``."""
    for shape, colour, size in objects:
        if shape not in SHAPES or colour not in COLOURS or size not in SIZES:
            raise ValueError(f"unknown object ({shape!r}, {colour!r}, {size!r})")
    if layout not in LAYOUTS or background not in BACKGROUNDS or bg_colour not in BG_COLOURS:
        raise ValueError(f"unknown layout/background {layout!r}/{background!r}/{bg_colour!r}")
    if not 1 <= len(objects) <= 5:
        raise ValueError("a scene has 1 to 5 objects")
    return Scene(background, bg_colour, layout, place(list(objects), layout, np.random.default_rng(seed)))


# --------------------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------------------


def _background(scene: Scene, size: int) -> Image.Image:
    base, other = (np.array(c, dtype=np.float32) for c in BG_COLOURS[scene.bg_colour])
    img = np.empty((size, size, 3), dtype=np.float32)
    img[:] = base
    unit = size / CANVAS
    if scene.background == "stripes":
        period = 12 * unit
        rows = (np.arange(size) % period) < period / 2
        img[rows] = other
    elif scene.background == "gradient":
        t = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None, None]
        img = base * (1 - t) + other * t * np.ones((1, size, 1), dtype=np.float32)
    pil = Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8))
    if scene.background == "dots":
        draw = ImageDraw.Draw(pil)
        step, rad = 12 * unit, 1.6 * unit
        for cy in np.arange(step / 2, size, step):
            for cx in np.arange(step / 2, size, step):
                draw.ellipse([cx - rad, cy - rad, cx + rad, cy + rad], fill=tuple(int(v) for v in other))
    return pil


def _shape_polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        h = r * 0.86
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        return [(cx + r * 1.1 * math.cos(a), cy + 0.15 * r + r * 1.1 * math.sin(a))
                for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    if shape == "star":
        pts = []
        for k in range(10):
            rad = r * 1.15 if k % 2 == 0 else r * 0.47
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
        return pts
    if shape == "cross":
        w, L = r * 0.36, r * 1.05
        return [(cx - w, cy - L), (cx + w, cy - L), (cx + w, cy - w), (cx + L, cy - w), (cx + L, cy + w),
                (cx + w, cy + w), (cx + w, cy + L), (cx - w, cy + L), (cx - w, cy + w), (cx - L, cy + w),
                (cx - L, cy - w), (cx - w, cy - w)]
    raise ValueError(f"unknown shape {shape!r}")


def render(scene: Scene, size: int = 96) -> np.ndarray:
    """Draw ``scene`` as ``uint8 [size, size, 3]`` (no anti-aliasing; deterministic)."""
    img = _background(scene, size)
    draw = ImageDraw.Draw(img)
    unit = size / CANVAS
    n = scene.n
    for o in scene.objects:
        r = RADIUS[o.size]
        if scene.layout == "row":
            r = min(r, CANVAS / n / 2 - 1.0)  # five large objects in a row: shrink just enough not to touch
        r *= unit
        cx, cy = o.x * size, o.y * size
        fill = COLOURS[o.colour]
        if o.shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        else:
            draw.polygon(_shape_polygon(o.shape, cx, cy, r), fill=fill)
    return np.asarray(img, dtype=np.uint8).copy()
