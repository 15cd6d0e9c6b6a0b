"""bench: an open benchmark harness for visual intention understanding with CLIP."""

from __future__ import annotations

import os as _os

__version__ = "0.2.0"  # 0.2.0: val selections with a tie rule (every run id changes)

# Installed, ``methods/``, ``datasets/`` and ``reports/`` live at ``bench/methods`` etc. (setuptools
# ``package-dir``). Imported straight from a source checkout (``python -m bench`` in the repo root), they are the
# checkout's top-level folders: let the ``bench`` package find them there too.
_checkout = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_checkout, "pyproject.toml")) and _os.path.isfile(
    _os.path.join(_checkout, "methods", "__init__.py")
):
    __path__.append(_checkout)  # type: ignore[name-defined]  # noqa: F821

_API = ("load_results", "summarize", "run", "report")
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    """The Python API (:mod:`bench.api`), imported on first use so ``import bench`` stays light."""
    if name in _API:
        from bench import api

        return getattr(api, name)
    raise AttributeError(f"module 'bench' has no attribute {name!r}")
