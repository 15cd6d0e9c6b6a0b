"""Lazy registries of methods, datasets and backbones.

Entries are ``"module:attribute"`` strings imported on first use, so ``bench ls`` and config validation stay
fast and a method's heavy dependencies cost nothing until it runs. Adding a method = one file in ``methods/`` and
one line below; another package adds its own through the ``bench.methods`` / ``bench.datasets`` entry-point groups
(``[project.entry-points."bench.methods"] prior-knn = "my_lab.prior_knn:PriorKNN"``).
"""

from __future__ import annotations

import difflib
import functools
import fnmatch
import importlib
from typing import Any

from bench.errors import UnknownNameError


@functools.lru_cache(maxsize=1)
def _installed_entry_points():
    """Every installed package's entry points, read once per process (the methods and datasets registries share it)."""
    from importlib.metadata import entry_points

    return entry_points()


class Registry:
    """Maps names to lazily imported objects; unknown names fail with "did you mean ...?"."""

    def __init__(self, kind: str, entries: dict[str, str], group: str | None = None) -> None:
        self.kind = kind
        self._targets: dict[str, str] = dict(entries)
        self._loaded: dict[str, Any] = {}
        self._group = group  # Python entry-point group third-party packages register under
        self._discovered = group is None

    def _discover(self) -> None:
        """Add the entries other installed packages declare under the entry-point group (once; a built-in name
        always wins, so a plugin can add methods but never replace one)."""
        if self._discovered:
            return
        self._discovered = True
        for ep in _installed_entry_points().select(group=self._group):
            self._targets.setdefault(ep.name, ep.value)

    def register(self, name: str, target: str | Any) -> None:
        """Add an entry: a ``"module:attr"`` string or the object itself (for plugins and tests)."""
        if isinstance(target, str):
            self._targets[name] = target
            self._loaded.pop(name, None)
        else:
            self._targets[name] = f"{getattr(target, '__module__', '?')}:{getattr(target, '__qualname__', name)}"
            self._loaded[name] = target

    def unregister(self, name: str) -> None:
        self._targets.pop(name, None)
        self._loaded.pop(name, None)

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names matching a shell-style wildcard, sorted."""
        self._discover()
        return sorted(n for n in self._targets if fnmatch.fnmatchcase(n, pattern))

    def check(self, name: str) -> str:
        """Return ``name`` if registered, else raise :class:`UnknownNameError` with close matches."""
        self._discover()
        if name in self._targets:
            return name
        close = difflib.get_close_matches(name, list(self._targets), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownNameError(
            f"unknown {self.kind} {name!r}{hint} (known: {', '.join(self.names())}; see `bench ls {self.kind}s`)"
        )

    def get(self, name: str) -> Any:
        """Import (once) and return the object registered under ``name``."""
        self.check(name)
        if name not in self._loaded:
            module_name, _, attr = self._targets[name].partition(":")
            obj: Any = importlib.import_module(module_name)
            for part in attr.split("."):
                obj = getattr(obj, part)
            self._loaded[name] = obj
        return self._loaded[name]

    def __contains__(self, name: object) -> bool:
        self._discover()
        return name in self._targets


class MethodRegistry(Registry):
    """Methods, plus their variants: ``"intclip:no-sa"`` is ``intclip`` with its ``VARIANTS["no-sa"]`` config."""

    def check(self, name: str) -> str:
        base, sep, variant = name.partition(":")
        super().check(base)
        if sep:
            known = self.get(base).VARIANTS
            if variant not in known:
                close = difflib.get_close_matches(variant, list(known), n=3, cutoff=0.5)
                hint = f"; did you mean {', '.join(repr(f'{base}:{c}') for c in close)}?" if close else ""
                raise UnknownNameError(f"unknown variant {name!r}{hint} (variants of {base}: {', '.join(known) or 'none'})")
        return name

    def get(self, name: str) -> Any:
        base, sep, variant = name.partition(":")
        if not sep:
            return super().get(name)
        self.check(name)
        if name not in self._loaded:
            self._loaded[name] = super().get(base).variant(variant)
        return self._loaded[name]

    def variants(self, base: str) -> list[str]:
        return [f"{base}:{v}" for v in self.get(base).VARIANTS]


METHODS = MethodRegistry(
    "method",
    {
        "linear-probe": "bench.methods.linear_probe:LinearProbe",
        "zeroshot": "bench.methods.zeroshot:ZeroShot",
        "dualcoop": "bench.methods.dualcoop:DualCoOp",
        "intclip": "bench.methods.intclip:IntCLIP",
        "intclip-official": "bench.methods.intclip:IntCLIPOfficial",
        "label-prior": "bench.methods.label_prior:LabelPrior",
        "query2label": "bench.methods.query2label:Query2Label",
        "hleg": "bench.methods.hleg:HLEG",
        "labcr": "bench.methods.labcr:LabCR",
        "pipnet": "bench.methods.pipnet:PIPNet",
    },
    group="bench.methods",
)

DATASETS = Registry(
    "dataset",
    {
        "synthetic": "bench.datasets.synthetic:SyntheticIntentions",
        "intentonomy": "bench.datasets.intentonomy:Intentonomy",
        "emotionroi": "bench.datasets.emotion:EmotionROI",
        "fi": "bench.datasets.emotion:FI",
    },
    group="bench.datasets",
)

class BackboneRegistry(Registry):
    """The registered backbones, plus every open_clip model name (``open_clip.list_models()``, configs added with
    ``open_clip.add_model_config`` included) and every ``hf-hub:org/name``, resolved into a spec on use by
    :func:`bench.backbones.loader.resolve_spec` (a registered name always wins)."""

    def _resolve(self, name: str) -> Any:
        from bench.backbones.loader import resolve_spec

        return resolve_spec(name)

    def check(self, name: str) -> str:
        self._discover()
        if name in self._targets or self._resolve(name) is not None:
            return name
        import open_clip

        close = difflib.get_close_matches(name, list(dict.fromkeys([*self._targets, *open_clip.list_models()])), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownNameError(
            f"unknown backbone {name!r}{hint} (registered: {', '.join(self.names())}; or any open_clip model name or "
            "hf-hub:org/name, see `bench ls backbones`)"
        )

    def get(self, name: str) -> Any:
        if name in self._targets:
            return super().get(name)
        self.check(name)
        return self._resolve(name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (super().__contains__(name) or self._resolve(name) is not None)


BACKBONES = BackboneRegistry(
    "backbone",
    {
        "tiny-clip": "bench.backbones.loader:TINY_CLIP",
        "RN50": "bench.backbones.loader:RN50",
        "RN101": "bench.backbones.loader:RN101",
        "ViT-B-32": "bench.backbones.loader:VIT_B_32",
    },
)

REGISTRIES = {"methods": METHODS, "datasets": DATASETS, "backbones": BACKBONES}


def create_method(name: str, config, backbone, data, device):
    """The one place a method is built (the runner, Ray search trials and ``bench params`` call it): the registered
    class of ``name`` (a variant too) with its validated ``config`` on ``backbone`` for ``data``'s task. A backbone
    whose towers the method cannot read (read from the built model: an ``hf-hub:`` config is known only once loaded)
    fails here, before anything is built."""
    from bench.errors import ConfigError
    from bench.backbones.openclip import model_towers, unsupported

    cls = METHODS.get(name)
    reason = unsupported(cls, *model_towers(backbone.model, backbone.tokenizer))
    if reason:
        raise ConfigError(f"method {name!r} cannot run on backbone {backbone.spec.name!r}: {reason}")
    return cls(config, backbone, data, device)
