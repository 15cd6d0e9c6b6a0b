"""Label-efficiency protocols in the harness (bench.pipeline.labels, README "Label efficiency"): DualCoOp's loss
ignores unobserved labels (against the released code's formula by hand), methods without a mask and k-shot on
multi-label data are refused by name, a full-data run keeps its run id exactly (the one an older bench wrote), a
fraction run gets its own, and a train_fraction suite runs end to end into the label-efficiency table and curve."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
import torch

from bench import __version__
from bench.config import load_config
from bench.datasets import subsets
from bench.datasets.base import ClassInfo, DatasetData
from bench.errors import ConfigError
from bench.pipeline.labels import apply_labels
from bench.pipeline.plan import method_identity, plan_suite
from bench.registry import METHODS
from bench.store import collection, store
from tests.conftest import REPO, make_run

OLD_STORE = REPO / "tests" / "data" / "store-0.2.0"  # written by bench 0.2.0, before these protocols existed


# -- partial labels on DualCoOp ----------------------------------------------------------------------------------
def _dualcoop(num_classes: int = 3):
    from bench.backbones.loader import TINY_CLIP, load_backbone

    torch.manual_seed(0)
    classes = [ClassInfo(f"c{i}", f"class {i}", f"a photo of class {i}.") for i in range(num_classes)]
    data = DatasetData("toy", "multilabel", classes, [], {}, "0" * 64)
    cls = METHODS.get("dualcoop")
    return cls(cls.Config(augment="none"), load_backbone(TINY_CLIP, "none"), data, torch.device("cpu"))


def _released_asl(logit_pos: np.ndarray, logit_neg: np.ndarray, target: np.ndarray, c) -> float:
    """The released DualCoOp code's AsymmetricLoss in float64, as written there: the (negative, positive) softmax,
    the entries whose target is -1 dropped, the clipped negative probability, the detached focusing weight, the
    sum; times loss_w."""
    p_pos = 1.0 / (1.0 + np.exp(logit_neg - logit_pos))
    keep = target.reshape(-1) != -1
    xs_pos, y = p_pos.reshape(-1)[keep], target.reshape(-1)[keep]
    xs_neg = np.minimum(1.0 - xs_pos + c.asl_clip, 1.0)
    loss = y * np.log(np.maximum(xs_pos, c.asl_eps)) + (1 - y) * np.log(np.maximum(xs_neg, c.asl_eps))
    pt = xs_pos * y + xs_neg * (1 - y)
    loss = loss * (1 - pt) ** (c.gamma_pos * y + c.gamma_neg * (1 - y))
    return float(-loss.sum() * c.loss_weight)


def test_dualcoop_loss_ignores_unobserved_labels_as_the_released_code():
    method = _dualcoop()
    method.train(True)
    images = method.prepare(torch.randint(0, 256, (4, method.backbone.image_size, method.backbone.image_size, 3), dtype=torch.uint8))
    labels = torch.tensor([[1, 0, -1], [-1, -1, 1], [0, 1, 0], [-1, 0, -1]], dtype=torch.float32)
    with torch.no_grad():
        pos, neg = method.logits(images, method.text_features())
    loss = method.training_loss(images, labels)
    expected = _released_asl(pos.double().numpy(), neg.double().numpy(), labels.double().numpy(), method.config)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # the hidden entries would count if they were labels: as negatives the loss is another number
    assert method.training_loss(images, labels.clamp(min=0)).item() != pytest.approx(expected, rel=1e-3)
    # no gradient reaches a logit whose label is unobserved; every observed one gets some
    lp, ln = pos.clone().requires_grad_(), neg.clone().requires_grad_()
    method.config.loss(lp, ln, labels).backward()
    hidden = labels == subsets.UNOBSERVED
    assert (lp.grad[hidden] == 0).all() and (ln.grad[hidden] == 0).all()
    assert (lp.grad[~hidden] != 0).all()
    # every label observed: bit for bit the plain loss
    full = torch.tensor([[1, 0, 0], [0, 1, 1], [0, 1, 0], [1, 0, 0]], dtype=torch.float32)
    c = method.config
    plain = -c.loss_weight * _asl_terms_sum(pos, neg, full, c)
    assert torch.equal(method.config.loss(pos, neg, full), plain)


def _asl_terms_sum(pos, neg, labels, c):
    from bench.methods.components import asymmetric_loss_terms

    p_pos = torch.softmax(torch.stack([neg.float(), pos.float()], dim=-1), dim=-1)[..., 1]
    return asymmetric_loss_terms(p_pos, labels, c.gamma_neg, c.gamma_pos, c.asl_clip, c.asl_eps).sum()


# -- refusals ----------------------------------------------------------------------------------------------------
def _cfg(tmp_path, shared_cache, methods, **suite):
    overrides = {"suite.methods": methods, "suite.datasets": ["synthetic"], "suite.seeds": [0, 1], "suite.executor": "serial",
                 "paths.results": str(tmp_path / "results"), "paths.cache": str(shared_cache),
                 "datasets.synthetic": {"n_train": 96, "n_val": 48, "n_test": 48}}
    return load_config(None, {**overrides, **{f"suite.{k}": v for k, v in suite.items()}})


def test_methods_without_a_mask_and_k_shot_on_multilabel_data_are_refused_by_name(tmp_path, shared_cache):
    assert METHODS.get("dualcoop").partial_labels and not METHODS.get("linear-probe").partial_labels
    with pytest.raises(ConfigError, match=r"suite.label_proportion: method 'linear-probe' cannot ignore unobserved labels.*dualcoop"):
        plan_suite(_cfg(tmp_path, shared_cache, ["dualcoop", "linear-probe"], label_proportion=[0.5]))
    with pytest.raises(ConfigError, match=r"suite.shots: dataset 'synthetic' is multi-label"):
        plan_suite(_cfg(tmp_path, shared_cache, ["dualcoop"], shots=[1, 2]))
    # a run built by hand is refused as well, before anything trains
    plans, datasets = plan_suite(_cfg(tmp_path, shared_cache, ["dualcoop"], label_proportion=[0.5]))
    with pytest.raises(ConfigError, match="method 'label-prior' cannot ignore"):
        apply_labels(plans[0].identity, "label-prior", datasets[plans[0].data], 0)


def test_k_shot_runs_train_on_k_images_per_class_of_single_label_data():
    from bench.config import SuiteConfig
    from bench.datasets.base import Split
    from bench.pipeline.labels import LabelLevel, LabelPlan

    rng = np.random.default_rng(0)

    def split(n: int) -> Split:
        return Split(rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8), rng.integers(0, 3, n), [str(i) for i in range(n)])

    classes = [ClassInfo(k, k, k) for k in ("happy", "sad", "calm")]
    data = DatasetData("toy", "multiclass", classes, [], {"train": split(60), "val": split(9), "test": split(9)}, "0" * 64)
    labels = LabelPlan(SuiteConfig(shots=[4, 1]))
    assert labels.levels_for("zeroshot", "toy", data) == [None]  # nothing to train: one run, as without shots
    one, four = labels.levels_for("dualcoop", "toy", data)
    for level, k in ((one, 1), (four, 4)):
        identity = labels.identity(level, "toy", data, 3)
        part, record = apply_labels(identity, "dualcoop", data, 3)
        assert np.bincount(part.splits["train"].labels, minlength=3).tolist() == [k] * 3
        assert record["n_train"] == 3 * k and record["n_train_full"] == 60 and record["seed"] == 3
        assert part.splits["val"] is data.splits["val"]
    with pytest.raises(ConfigError, match=r"suite.shots: toy: 30-shot needs 30 training images per class"):
        LabelPlan(SuiteConfig(shots=[30])).identity(LabelLevel("shots", 30), "toy", data, 0)


def test_partial_labels_hide_training_labels_only(tmp_path, shared_cache):
    plans, datasets = plan_suite(_cfg(tmp_path, shared_cache, ["dualcoop"], label_proportion=[0.3]))
    plan = plans[1]
    data = datasets[plan.data]
    part, record = apply_labels(plan.identity, plan.method, data, plan.seed)
    observed = subsets.partial_mask(data.splits["train"].labels.shape, 0.3, plan.seed)
    assert np.array_equal(part.splits["train"].labels, subsets.hide_labels(data.splits["train"].labels, observed))
    assert part.splits["val"] is data.splits["val"] and part.splits["test"] is data.splits["test"]
    assert record["observed"] == pytest.approx(observed.mean()) and record["observed_sha256"] == subsets.mask_sha256(observed)


# -- identity ----------------------------------------------------------------------------------------------------
def _old_identity(cfg, method: str, seed, data) -> dict:
    """A run's identity as bench 0.2.0 built it (before label protocols): these keys and nothing else."""
    from bench.backbones.loader import architecture, weights_identity
    from bench.registry import BACKBONES

    spec, pretrained = BACKBONES.get(cfg.suite.backbone), cfg.backbone_pretrained(cfg.suite.backbone)
    return {
        "code": {"bench": __version__, "method": METHODS.get(method).version},
        "method": method_identity(method, cfg.method_config(method)),
        "backbone": {"name": cfg.suite.backbone, "pretrained": pretrained, "weights": weights_identity(spec, pretrained, cfg.paths.weights),
                     "architecture": architecture(spec, pretrained)},
        "dataset": {"name": "synthetic", "config": cfg.dataset_config("synthetic").model_dump(mode="json"),
                    "manifest_sha256": data.manifest_sha256},
        "protocol": cfg.protocol.name,
        "seed": seed,
    }


def test_a_full_data_run_keeps_its_run_id_and_a_fraction_run_gets_its_own(tmp_path, shared_cache):
    cfg = load_config(OLD_STORE / "bench.toml", {"suite.methods": ["zeroshot", "dualcoop"], "suite.train_fraction": [0.5, 1.0],
                                                 "paths.cache": str(shared_cache), "paths.results": str(OLD_STORE / "results")})
    plans, datasets = plan_suite(cfg)
    by_level = {(p.method, (p.identity.get("labels") or {}).get("value")): p for p in plans}
    assert set(by_level) == {("dualcoop", 0.5), ("dualcoop", None), ("zeroshot", None)} and len(plans) == 3  # zeroshot trains nothing
    data = datasets["synthetic"]
    for method, seed in (("dualcoop", 0), ("zeroshot", None)):
        full = by_level[(method, None)]
        assert full.identity == _old_identity(cfg, method, seed, data)
        assert full.run_id == store.compute_run_id(_old_identity(cfg, method, seed, data))
        assert (OLD_STORE / "results" / "runs" / full.run_id / "result.json").is_file()  # the run 0.2.0 wrote
    half = by_level[("dualcoop", 0.5)]
    assert half.run_id != by_level[("dualcoop", None)].run_id and half.seed == 0
    expected = subsets.nested_fractions(data.splits["train"].labels, [0.5], 0)[0.5]
    assert half.identity["labels"] == {"protocol": "train_fraction", "value": 0.5, "nested_in": [], "n_train": 48,
                                       "train_sha256": subsets.indices_sha256(expected)}
    old = store.read_result(OLD_STORE / "results" / "runs" / by_level[("dualcoop", None)].run_id)
    assert old.label_protocol is None  # records written before the field validate, as the whole split


# -- the efficiency table from records (no training) --------------------------------------------------------------
def test_efficiency_table_holds_the_means_over_seeds(tmp_path):
    from bench.reports import efficiency
    from bench.reports.render import split_inputs
    from bench.store.schema import LabelProtocolRecord

    values = {(0.1, 0): 0.20, (0.1, 1): 0.30, (0.5, 0): 0.40, (0.5, 1): 0.46, (1.0, 0): 0.50, (1.0, 1): 0.56}
    records = []
    for (fraction, seed), value in values.items():
        r = make_run(tmp_path / "results", "dualcoop", seed, test={"macro_f1": value})
        if fraction < 1:
            r.run_id = f"{r.run_id}-{fraction}"
            r.label_protocol = LabelProtocolRecord(protocol="train_fraction", value=fraction, seed=seed, n_train=10,
                                                   n_train_full=100, train_sha256="f" * 64)
        records.append(r)
    whole, summary, every = split_inputs(records, tmp_path / "results", bootstrap=0)
    assert len(whole) == 2 and list(summary["method"]) == ["dualcoop"] and summary["n"].tolist() == [2]
    (table,) = efficiency.efficiency_tables(every)
    assert table.levels == [0.1, 0.5] and table.whole and table.headers() == ["10%", "50%", "100%"]
    ((label, cells),) = table.rows
    assert label == "dualcoop"
    for cell, (a, b) in zip(cells, [(0.20, 0.30), (0.40, 0.46), (0.50, 0.56)]):
        assert cell.mean == pytest.approx((a + b) / 2) and cell.std == pytest.approx(np.std([a, b], ddof=1)) and cell.n == 2
    assert "| dualcoop | 25.00 ± 7.07 | 43.00 ± 4.24 | 53.00 ± 4.24 |" in efficiency.to_markdown([table])
    # the experiment ids of whole-split rows are what they were before the label_budget column
    row = summary.iloc[0]
    old_key = {k: str(row[k]) for k in ("method_name", "method_version", "config_id", "weights_id", "tuned")}
    assert row["experiment_id"] == store.compute_run_id(old_key)[:12]


# -- end to end --------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_train_fraction_suite_runs_into_the_efficiency_table_and_curve(write_config):
    """3 fractions x 2 seeds of the linear probe (deterministic on the whole split) and DualCoOp (1 epoch)."""
    from rich.console import Console

    from bench.reports.render import render_report
    from bench.workflows.suite import run_suite

    cfg = load_config(write_config(methods=("linear-probe", "dualcoop"), seeds=(0, 1), epochs=1),
                      {"suite.train_fraction": [0.25, 0.5, 1.0]})
    outcome = run_suite(cfg, Console(stderr=True, quiet=True))
    assert outcome.ok and len(outcome.completed) == 2 * 2 + 1 + 3 * 2
    records, bad = collection.load_results(cfg.paths.results)
    assert not bad
    means: dict[tuple[str, float], list[float]] = {}
    for r in records:
        level = r.label_protocol
        fraction = 1.0 if level is None else level.value
        means.setdefault((r.method.name, fraction), []).append(r.metrics.test["macro_f1"])
        if level is not None:  # the record says what it trained on; val and test stay whole
            assert r.dataset.split_sizes == {"train": level.n_train, "val": 48, "test": 48}
            assert level.n_train == int(96 * fraction) and level.seed == r.seed and level.n_train_full == 96
    table = list(csv.DictReader(io.StringIO(render_report(cfg, "csv", bootstrap=0, tables="efficiency")[0])))
    assert len(table) == 6
    for row in table:
        values = means[(row["method"], float(row["level"]))]
        assert float(row["mean"]) == pytest.approx(np.mean(values), rel=1e-12) and int(row["n"]) == len(values)
        assert (row["std"] == "") == (len(values) == 1)
    md = render_report(cfg, "md", bootstrap=0)[0]
    assert "| Method | 25% | 50% | 100% |" in md
    cells = md.split("| dualcoop | ")[-1].split(" |")[0]  # the efficiency row (the main table's row has #P first)
    assert cells == f"{100 * np.mean(means[('dualcoop', 0.25)]):.2f} ± {100 * np.std(means[('dualcoop', 0.25)], ddof=1):.2f}"
    page = render_report(cfg, "html", bootstrap=0)[0]
    section = page[page.index('<section id="efficiency-1">'):]
    section = section[: section.index("</section>")]
    assert section.count("<svg") == 1 and "training fraction" in section and "data:text/csv" in section
    latex = render_report(cfg, "latex", bootstrap=0, standalone=True)[0]
    assert latex.index("Label efficiency") < latex.index(r"\end{document}")
