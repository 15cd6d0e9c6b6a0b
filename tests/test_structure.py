"""The package's shape: subpackages that import only downward (the table below), no import circle, no private name
imported across modules, Ray and Optuna under bench/ray/ only, small modules and functions, tools/ off the run path,
and one contract every registered method keeps (on the tiny CLIP)."""

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import REPO
from bench.backbones.loader import TINY_CLIP, load_backbone
from bench.registry import METHODS, create_method

PACKAGES = {"bench": "bench", "bench.methods": "methods", "bench.datasets": "datasets", "bench.reports": "reports",
            "bench.tools": "tools"}
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, Path]:
    """Every module of the installed package by its dotted name (``bench.cli.app``, ``bench.methods.intclip``)."""
    out = {}
    for prefix, folder in PACKAGES.items():
        for path in (REPO / folder).rglob("*.py"):
            parts = [p for p in path.relative_to(REPO / folder).with_suffix("").parts if p != "__init__"]
            if prefix == "bench" and parts and parts[0] in ("methods", "datasets", "reports", "tools", "assets"):
                continue  # (never there: those are the top-level folders)
            out[".".join([prefix, *parts])] = path
    return out


# Which part of the package each module belongs to, and which parts each part may import (a module imports its own
# part freely). Everything points down: base <- backbones <- names <- datasets/store/train <- pipeline <- ray <-
# workflows <- api <- cli. The store and the results collection know nothing of planning; reports know nothing of
# the CLI, the pipeline or training (they never import torch).
BASE = {"bench", "bench.errors", "bench.io", "bench.metrics", "bench.selection", "bench.protocol", "bench.overrides"}
ALLOWED = {
    "base": set(),
    "escape": set(),  # bench.reports.escape: the one sanitiser every printed or rendered name goes through
    "backbones": {"base"},
    "names": {"base", "backbones"},  # the registries and the config, which resolve names (a backbone's too)
    "datasets": {"base", "escape"},
    "store": {"base"},
    "train": {"base", "datasets"},
    "methods": {"base", "train", "datasets"},
    "pipeline": {"base", "backbones", "names", "datasets", "store", "train"},
    "ray": {"base", "backbones", "names", "datasets", "store", "train", "pipeline"},
    "reports": {"base", "names", "store", "escape"},
    "workflows": {"base", "backbones", "names", "datasets", "store", "train", "methods", "pipeline", "ray", "reports", "escape"},
    "api": {"base", "names", "store", "reports", "workflows"},
    "cli": {"base", "backbones", "names", "datasets", "store", "pipeline", "reports", "escape", "workflows", "api", "tools"},
    "tools": {"base", "backbones", "names", "datasets", "train", "methods"},
}


def _part(module: str) -> str:
    if module in BASE:
        return "base"
    if module in ("bench.registry", "bench.config"):
        return "names"
    if module == "bench.reports.escape":
        return "escape"
    if module == "bench.api":
        return "api"
    if module == "bench.__main__":
        return "cli"
    if module == "bench.data":  # the plugins' import path of the batch helpers
        return "train"
    return module.split(".")[1]


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Modules of the package that ``name`` imports, at module level or inside functions (``if TYPE_CHECKING:``
    blocks excluded: they never run)."""
    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)}
    if path.stem == "__init__":  # a package's PEP 562 __getattr__ imports on first attribute use, after the package
        skip |= {id(n) for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "__getattr__"
                 for n in ast.walk(node)}
    out = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = name if path.stem == "__init__" else name.rsplit(".", 1)[0]
                for _ in range(node.level - 1):
                    parent = parent.rsplit(".", 1)[0]
                base = f"{parent}.{base}" if base else parent
            # `from bench import store` depends on bench.store.store; on the package itself only for a name it defines
            submodules = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known]
            candidates = submodules + ([base] if len(submodules) < len(node.names) else [])
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        out |= {c for c in candidates if c in known and c != name}
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: _imports(m, p, set(modules)) for m, p in modules.items()}


def test_every_module_has_a_part_and_every_part_a_row():
    parts = {_part(m) for m in _modules()}
    assert parts == set(ALLOWED), parts ^ set(ALLOWED)


def test_subpackages_import_only_in_the_allowed_directions():
    graph = _graph()
    assert "bench.pipeline.plan" in graph["bench.workflows.suite"]  # the checker sees edges (function-level ones too)
    wrong = sorted(f"{m} -> {d}" for m, deps in graph.items() for d in deps
                   if _part(d) != _part(m) and _part(d) not in ALLOWED[_part(m)])
    assert not wrong, wrong


def test_the_direction_check_can_fail():
    """An edge against the table is reported: the store importing the planner would be."""
    assert "pipeline" not in ALLOWED["store"] and "cli" not in ALLOWED["reports"] and "workflows" not in ALLOWED["pipeline"]


def test_no_private_name_is_imported_across_modules():
    found = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                found += [f"{name}: from {node.module} import {a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
    assert not found, found


def test_no_import_circle_inside_the_package():
    graph = _graph()
    assert "bench.workflows.suite" in graph["bench.workflows.tune"] and "bench.ray.executor" not in graph["bench.pipeline.plan"]
    state: dict[str, int] = {}  # 1 on the stack, 2 done

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(dep):] + [dep]))
            if dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_ray_and_optuna_are_imported_under_bench_ray_only():
    for name, path in _modules().items():
        tree = ast.parse(path.read_text())
        names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and not n.level}
        if not name.startswith("bench.ray."):
            assert not names & {"ray", "optuna"}, name


def test_no_module_over_450_lines_and_no_function_over_80():
    too_long = []
    for name, path in _modules().items():
        text = path.read_text()
        if text.count("\n") > MAX_MODULE_LINES:
            too_long.append(f"{name}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{name}.{node.name}: {length} lines")
    assert not too_long, too_long


def test_the_measuring_is_real():
    """The checks read what they claim: every subpackage's modules are seen, at plausible sizes."""
    modules = _modules()
    sizes = {name: path.read_text().count("\n") for name, path in modules.items()}
    assert len(sizes) > 60 and max(sizes.values()) > 300
    assert {"bench.cli.app", "bench.pipeline.plan", "bench.train.engine", "bench.store.collection", "bench.ray.executor",
            "bench.backbones.loader", "bench.workflows.reproduce", "bench.datasets.download"} <= set(modules)


def test_tools_are_off_the_run_path():
    """Nothing the run imports pulls in bench.tools (the tiny CLIP's pretraining, the official reference step); only
    the CLI's `bench pretrain-tiny-clip` command reaches it, inside the command."""
    graph = _graph()
    assert "bench.backbones.tiny_clip" in graph["bench.tools.pretrain_tiny_clip"]  # the checker sees tools' own edges
    for name, deps in graph.items():
        if name.startswith("bench.tools") or name == "bench.cli.inspect":
            continue
        assert not {d for d in deps if d.startswith("bench.tools")}, name
    cli = ast.parse(_modules()["bench.cli.inspect"].read_text())
    top_level = {a.name for n in cli.body if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("bench.tools") for a in n.names}
    assert not top_level


# -- the method contract ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from bench.datasets.synthetic import SyntheticIntentions

    cfg = SyntheticIntentions.Config(n_train=32, n_val=16, n_test=16)
    return SyntheticIntentions(cfg, None, tmp_path_factory.mktemp("data")).load(96)


def _plugin(name: str):
    """The example plugin's method (tests/plugin), held to the same contract as the built-in ones."""
    import sys

    sys.path.insert(0, str(REPO / "tests" / "plugin"))
    try:
        from bench_toy_plugin.prior_knn import PriorKNN
    finally:
        sys.path.pop(0)
    return PriorKNN


def _build(name: str, data, seed: int = 0, **overrides):
    cls = _plugin(name) if name == "prior-knn" else METHODS.get(name)
    small = {"epochs": 1, "batch_size": 16} if "epochs" in cls.Config.model_fields else {}
    if name.startswith(("query2label", "hleg", "labcr")):
        small |= {"hidden_dim": 32, "dim_feedforward": 64}
    torch.manual_seed(seed)
    backbone = load_backbone(TINY_CLIP, "none")
    if name == "prior-knn":
        return cls(cls.Config(**small, **overrides), backbone, data, torch.device("cpu"))
    return create_method(name, cls.Config(**small, **overrides), backbone, data, torch.device("cpu"))


LIGHT = {"label-prior", "zeroshot", "linear-probe", "prior-knn"}  # contracts checked in the fast run (-m "not slow")


@pytest.mark.parametrize("name", [n if n in LIGHT else pytest.param(n, marks=pytest.mark.slow) for n in [*METHODS.names(), "prior-knn"]])
def test_every_registered_method_keeps_the_contract(name, synthetic, tmp_path):
    from bench.train.engine import RunContext, run_method

    def state(m) -> dict:
        return {k: v.detach().clone() for k, v in m.state_dict().items() if isinstance(v, torch.Tensor)}

    a, b = _build(name, synthetic), _build(name, synthetic)
    sa, sb = state(a), state(b)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)  # one seed, one initialisation
    learnable = a.learnable_parameters()
    if a.trainer == "engine":
        optimizer, _ = a.configure_optimizers(steps_per_epoch=2)
        in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
        assert in_optimizer == {id(p) for p in learnable.values()}
        assert a.param_counts()["learnable"] == sum(p.numel() for p in learnable.values()) > 0

    ctx = RunContext(run_dir=tmp_path / "run", seed=0, device=torch.device("cpu"), cache_dir=tmp_path / "cache", log=lambda *_: None)
    out = run_method(a, synthetic, ctx)
    n_val, n_classes = len(synthetic.splits["val"]), synthetic.num_classes
    assert out.val_scores.shape == (n_val, n_classes) and out.val_scores.dtype == np.float32
    assert out.val_logits.shape == (n_val, n_classes) and np.isfinite(out.val_logits).all()
    assert out.val_scores.min() >= 0 and out.val_scores.max() <= 1
    np.testing.assert_allclose(out.val_scores, 1 / (1 + np.exp(-out.val_logits)), rtol=1e-5, atol=1e-6)

    if a.trainer != "engine":
        return  # fitted and training-free methods keep their fit outside torch state
    restored = _build(name, synthetic)  # the same frozen backbone (the state is the learned part only) ...
    with torch.no_grad():  # ... and learned weights far from the trained ones
        for p in restored.learnable_parameters().values():
            p.add_(torch.randn_like(p))
    restored.load_state_dict(a.state_dict())
    for m in (a, restored):
        m.train(False)
        m.model.eval()
        m.start_eval()
    images = synthetic.splits["test"].images[:4]
    torch.testing.assert_close(restored.predict_logits(restored.prepare(images)), a.predict_logits(a.prepare(images)))
