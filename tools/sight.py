"""The words of the synthetic world: captions of what a scene shows, and the zero-shot "sight" probe.

:func:`caption` is the tiny CLIP's pretraining text: one sentence about what is visible (counts, colours,
shapes, sizes, layout, background), never an intention. :func:`zero_shot_sight` asks a CLIP to name the colour,
the shape and the number of objects in held-out scenes, with prompts in the captions' own wording.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench.datasets import scenes as syn
from bench.datasets.scenes import COLOURS, SHAPES, Scene
from bench.backbones.tiny_clip import image_size, to_input

# --------------------------------------------------------------------------------------------------------------
# Captions (what is visible, never the intentions): the tiny CLIP's pretraining text
# --------------------------------------------------------------------------------------------------------------

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five")
PLURAL = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars", "cross": "crosses"}
BG_WORDS = {"plain": "plain", "stripes": "striped", "dots": "dotted", "gradient": "gradient"}
LAYOUT_PHRASES = {
    "row": ("in a row", "lined up in a row", "side by side in a line"),
    "cluster": ("clustered together", "in a tight group", "huddled in a cluster"),
    "scattered": ("scattered around", "spread out", "scattered far apart"),
}
PHOTO = ("a photo of", "a picture of", "an image of")


def _noun(n: int, shape: str | None) -> str:
    if shape is None:
        return "shape" if n == 1 else "shapes"
    return shape if n == 1 else PLURAL[shape]


def _join(words: Sequence[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def caption(scene: Scene, rng: np.random.Generator, *, detailed: bool = False) -> str:
    """One sentence about what is visible: counts, colours, shapes, sizes, layout and background.

    Several templates, random phrasings and orders; the summary facts ("red shapes", "circles", "three shapes")
    use the same wording as the zero-shot prompts of :func:`sight_tasks`. ``detailed`` always lists every
    object (colour, shape and, mostly, size).
    """
    n = scene.n
    # the choices that do not depend on the objects come first, so two scenes that differ only in their shapes
    # get the same template and phrasing from equal generators
    template = int(rng.integers(4 if detailed else 6))
    with_size = rng.random() < 0.7
    layout = "" if n == 1 else " " + LAYOUT_PHRASES[scene.layout][int(rng.integers(3))]
    bg = f"a {BG_WORDS[scene.background]} {scene.bg_colour} background"
    if rng.random() < 0.5:
        bg = f"a {scene.bg_colour} {BG_WORDS[scene.background]} background"
    photo = PHOTO[int(rng.integers(len(PHOTO)))]
    count = f"{NUMBER_WORDS[n]} {_noun(n, None)}"

    groups = Counter((o.size if with_size else "", o.colour, o.shape) for o in scene.objects)
    keys = list(groups)
    parts = []
    for i in rng.permutation(len(keys)):
        size, colour, shape = keys[i]
        k = groups[(size, colour, shape)]
        words = [size] if size else []
        words += [colour, _noun(k, shape)]
        article = "an" if words[0][0] in "aeiou" else "a"
        words.insert(0, NUMBER_WORDS[k] if (k > 1 or rng.random() < 0.5) else article)
        parts.append(" ".join(words))
    objects = _join(parts)

    # short facts, phrased like the zero-shot prompts ("red shapes", "circles", "three shapes")
    colours = [c for c in COLOURS if c in scene.colours]
    shapes = [PLURAL[s] for s in SHAPES if s in scene.shapes]
    rng.shuffle(colours)  # type: ignore[arg-type]
    rng.shuffle(shapes)  # type: ignore[arg-type]
    facts = [count, f"{_join(colours)} shapes", _join(shapes)]
    if len(colours) == 1:
        facts.append(f"{NUMBER_WORDS[n]} {colours[0]} {_noun(n, None)}")
    if len(shapes) == 1:
        facts.append(f"{NUMBER_WORDS[n]} {_noun(n, next(iter(scene.shapes)))}")
    if len(colours) == 1 and len(shapes) == 1:
        facts.append(f"{NUMBER_WORDS[n]} {colours[0]} {_noun(n, next(iter(scene.shapes)))}")

    if template == 0:
        return f"{photo} {objects}{layout} on {bg}."
    if template == 1:
        return f"{photo} {count}{layout}: {objects}, on {bg}."
    if template == 2:
        return f"{bg} with {objects}{layout}."
    if template == 3:
        return f"{photo} {count} on {bg}: {objects}{layout}."
    fact = facts[int(rng.integers(len(facts)))]
    if template == 4:
        return f"{photo} {fact}."
    return f"{photo} {fact}{layout} on {bg}."


# --------------------------------------------------------------------------------------------------------------
# Zero-shot "sight": can the model name the colour, the shape and the number of objects it sees?
# --------------------------------------------------------------------------------------------------------------


def sight_tasks() -> dict[str, tuple[list[str], list[str]]]:
    """attribute -> (class values, one prompt per value)."""
    colours = list(syn.COLOURS)
    shapes = list(syn.SHAPES)
    counts = [1, 2, 3, 4]
    return {
        "colour": (colours, [f"a photo of {c} shapes." for c in colours]),
        "shape": (shapes, [f"a photo of {PLURAL[s]}." for s in shapes]),
        "count": ([str(k) for k in counts],
                  [f"a photo of {NUMBER_WORDS[k]} {'shape' if k == 1 else 'shapes'}." for k in counts]),
    }


def sight_scenes(attribute: str, n: int, seed: int) -> tuple[list[Any], np.ndarray]:
    """``n`` held-out scenes for one attribute and their target indices (classes drawn uniformly).

    colour: every object recoloured to one colour; shape: every object reshaped to one shape; count: 1..4
    objects of any kind. Scenes come from the ``sight-eval`` stream (offset per attribute), disjoint from the
    dataset splits and from pretraining.
    """
    offsets = {"colour": 0, "shape": 1, "count": 2}
    rng = syn.scene_stream(seed, syn.STREAMS["sight-eval"] + offsets[attribute])
    values = sight_tasks()[attribute][0]
    scenes, targets = [], np.empty(n, dtype=np.int64)
    for i in range(n):
        k = int(rng.integers(len(values)))
        if attribute == "count":
            scene = syn.random_scene(rng, n_objects=k + 1)
        else:
            scene = syn.random_scene(rng)
            field = "colour" if attribute == "colour" else "shape"
            scene = replace(scene, objects=tuple(replace(o, **{field: values[k]}) for o in scene.objects))
        scenes.append(scene)
        targets[i] = k
    return scenes, targets


@torch.no_grad()
def zero_shot_sight(model: torch.nn.Module, tokenizer: Any, *, n: int = 300, seed: int = 12345,
                    batch_size: int = 100) -> dict[str, dict[str, float]]:
    """Zero-shot accuracy on visible attributes: {attribute: {"accuracy", "chance", "n"}}."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    size = image_size(model)
    out = {}
    for attribute, (values, prompts) in sight_tasks().items():
        text = F.normalize(model.encode_text(tokenizer(prompts).to(device)), dim=-1)
        scenes, targets = sight_scenes(attribute, n, seed)
        correct = 0
        for start in range(0, n, batch_size):
            chunk = scenes[start:start + batch_size]
            images = np.stack([syn.render(s, size) for s in chunk])
            feats = F.normalize(model.encode_image(to_input(images, device)), dim=-1)
            pred = (feats @ text.T).argmax(-1).cpu().numpy()
            correct += int((pred == targets[start:start + batch_size]).sum())
        out[attribute] = {"accuracy": correct / n, "chance": 1.0 / len(values), "n": n}
    model.train(was_training)
    return out


def format_sight(result: dict[str, dict[str, float]]) -> str:
    lines = [f"{'attribute':<10} {'accuracy':>8} {'chance':>7} {'n':>5}"]
    for attribute, r in result.items():
        lines.append(f"{attribute:<10} {r['accuracy']:>8.3f} {r['chance']:>7.3f} {int(r['n']):>5}")
    return "\n".join(lines)
