import re
import tomllib
from pathlib import Path

import pytest

from bench.config import BenchConfig, load_config
from bench.overrides import parse_int_list, parse_override
from bench.errors import ConfigError
from tests.conftest import REPO


def test_repo_bench_toml_spells_out_the_built_in_defaults():
    """bench.toml and the pydantic defaults must not drift apart (sections the file sets explicitly)."""
    from_file = load_config(REPO / "bench.toml")
    defaults = BenchConfig()
    for section in ("suite", "protocol", "engine"):
        assert getattr(from_file, section) == getattr(defaults, section), section
    from bench.registry import DATASETS

    assert from_file.dataset_config("synthetic") == DATASETS.get("synthetic").Config()
    raw = tomllib.loads((REPO / "bench.toml").read_text())
    assert raw["suite"]["seeds"] == [0, 1, 2]
    assert raw["suite"]["datasets"] == ["synthetic"] and raw["suite"]["backbone"] == "tiny-clip"


def test_unknown_top_level_and_nested_keys_name_the_dotted_path(tmp_path: Path):
    cfg = tmp_path / "bench.toml"
    cfg.write_text("[suite]\nmethod = ['zeroshot']\n")
    with pytest.raises(ConfigError, match=r"bench.toml: suite.method: unknown key"):
        load_config(cfg)
    cfg.write_text("[methods.linear-probe]\nc_gird = [1.0]\n")
    with pytest.raises(ConfigError, match=r"methods.linear-probe.c_gird: unknown key"):
        load_config(cfg)
    cfg.write_text("[datasets.synthetic]\nn_trian = 3\n")
    with pytest.raises(ConfigError, match=r"datasets.synthetic.n_trian: unknown key"):
        load_config(cfg)


def test_wrong_types_name_key_and_expected_type(tmp_path: Path):
    cfg = tmp_path / "bench.toml"
    cfg.write_text("[suite]\nseeds = [0, 'one']\n")
    with pytest.raises(ConfigError, match=r"suite.seeds.1: Input should be a valid integer.*'one'"):
        load_config(cfg)
    cfg.write_text("[methods.dualcoop]\nepochs = 'many'\n")
    with pytest.raises(ConfigError, match=r"methods.dualcoop.epochs: Input should be a valid integer"):
        load_config(cfg)
    cfg.write_text("[engine]\namp = 'perhaps'\n")
    with pytest.raises(ConfigError, match=r"engine.amp: Input should be a valid boolean"):
        load_config(cfg)


def test_malformed_toml_names_the_file_and_line(tmp_path: Path):
    cfg = tmp_path / "bench.toml"
    cfg.write_text("[suite]\nseeds = [0, 1]\nbackbone = \n")
    with pytest.raises(ConfigError, match=r"bench.toml: not valid TOML: .*line 3"):
        load_config(cfg)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.toml")


def test_unknown_names_suggest_close_matches(tmp_path: Path):
    cfg = tmp_path / "bench.toml"
    cfg.write_text("[suite]\nmethods = ['dualcop']\n")
    with pytest.raises(ConfigError, match=r"suite.methods: unknown method 'dualcop'; did you mean 'dualcoop'"):
        load_config(cfg)
    cfg.write_text("[suite]\ndatasets = ['synthetc']\n")
    with pytest.raises(ConfigError, match=r"did you mean 'synthetic'"):
        load_config(cfg)
    cfg.write_text("[methods.zeroshoot]\n")
    with pytest.raises(ConfigError, match=r"methods: unknown method 'zeroshoot'; did you mean 'zeroshot'"):
        load_config(cfg)


def test_overrides_and_relative_paths(tmp_path: Path):
    cfg = tmp_path / "sub" / "bench.toml"
    cfg.parent.mkdir()
    cfg.write_text("[paths]\nresults = 'out'\n")
    loaded = load_config(cfg, {"suite.seeds": [4, 5], "methods.dualcoop.epochs": 3})
    assert loaded.paths.results == (tmp_path / "sub" / "out").resolve()
    assert loaded.suite.seeds == [4, 5]
    assert loaded.method_config("dualcoop").epochs == 3
    assert parse_override("methods.dualcoop.lr=0.01") == ("methods.dualcoop.lr", 0.01)
    assert parse_override("suite.methods=['a', 'b']") == ("suite.methods", ["a", "b"])
    assert parse_override("backbones.RN101.pretrained=/w/rn101.pt") == ("backbones.RN101.pretrained", "/w/rn101.pt")
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_override("no-equals-sign")


def test_seed_flag_must_be_integers():
    assert parse_int_list("0, 1,2", "--seeds") == [0, 1, 2]
    with pytest.raises(ConfigError, match=r"--seeds: 'x' is not an integer"):
        parse_int_list("0,x", "--seeds")
    with pytest.raises(ConfigError, match=r"suite.seeds: .*must not be empty"):
        load_config(None, {"suite.seeds": []})


def test_method_and_dataset_configs_are_validated_once_at_load_into_typed_objects(tmp_path: Path, monkeypatch):
    """Loading validates every section the suite uses; later lookups (planner, runner, search trials) reuse the
    typed object, hand out copies, and a changed section (a refit's best parameters) is validated afresh."""
    import bench.config as config_module

    calls: list[str] = []
    real = config_module._validate_section
    monkeypatch.setattr(config_module, "_validate_section", lambda cls, data, where, source, **kw: calls.append(where) or real(cls, data, where, source, **kw))
    path = tmp_path / "bench.toml"
    path.write_text("[suite]\nmethods = ['dualcoop', 'zeroshot']\ndatasets = ['synthetic']\n[methods.dualcoop]\nepochs = 3\n")
    cfg = load_config(path)
    assert sorted(calls) == ["datasets.synthetic", "methods.dualcoop", "methods.zeroshot"]
    first, second = cfg.method_config("dualcoop"), cfg.method_config("dualcoop")
    assert first.epochs == 3 and first == second and first is not second  # a copy each time
    first.epochs = 99
    assert cfg.method_config("dualcoop").epochs == 3  # callers cannot change the shared typed config
    cfg.dataset_config("synthetic")
    assert len(calls) == 3
    refit = cfg.model_copy(deep=True)
    refit.methods["dualcoop"] = {"epochs": 5}
    assert refit.method_config("dualcoop").epochs == 5 and len(calls) == 4  # new content, validated once more
    assert cfg.method_config("dualcoop", params={"lr": 0.5}).lr == 0.5


def test_search_parameters_and_method_decode_overrides_get_dotted_path_errors():
    cfg = load_config(None)
    with pytest.raises(ConfigError, match=r"methods\.dualcoop\.epochs: .*search trial"):
        cfg.method_config("dualcoop", params={"epochs": "many"})
    with pytest.raises(ConfigError, match=r"datasets\.synthetic\.n_train: .*set by the method"):
        cfg.dataset_config("synthetic", {"n_train": -1})


@pytest.mark.parametrize(
    "section, key, value, message",
    [
        ("methods.dualcoop", "warmup_lr", "-1.0", "greater than or equal to 0"),
        ("methods.dualcoop", "lr", "inf", "finite number"),
        ("methods.dualcoop", "lr", "nan", "finite number"),
        ("methods.intclip", "momentum", "1.0", "less than 1"),
        ("methods.intclip", "momentum", "-0.1", "greater than or equal to 0"),
        ("methods.intclip", "weight_decay", "-1e-4", "greater than or equal to 0"),
        ("methods.query2label", "weight_decay", "-1.0", "greater than or equal to 0"),
        ("methods.query2label", "asl_eps", "0.0", "greater than 0"),
        ("methods.linear-probe", "c_grid", "[1.0, -2.0]", "greater than 0"),
        ("methods.linear-probe", "c_grid", "[]", "at least 1"),
        ("methods.zeroshot", "template", '"a photo of {} and {}."', "exactly one {}"),
        ("methods.zeroshot", "template", '"a photo of {name}."', "exactly one {}"),
        ("methods.zeroshot", "template", '"a photo."', "exactly one {}"),
        ("engine", "device", '"gpu"', "expected auto, cpu, cuda"),
        ("leaderboard", "tolerance", "inf", "finite number"),
    ],
)
def test_every_numeric_setting_has_its_real_range_checked_at_load(tmp_path: Path, section, key, value, message):
    """Was: warmup_lr = -1 trained with a negative learning rate and exited 0, lr = inf passed gt=0, momentum and
    weight decay were unchecked, and engine.device / the zero-shot template failed only when a run started."""
    cfg = tmp_path / "bench.toml"
    cfg.write_text(f"[{section}]\n{key} = {value}\n")
    with pytest.raises(ConfigError, match=rf"bench.toml: {section}\.{key}(\.\d+)?: .*{re.escape(message)}"):
        load_config(cfg)


def test_cli_paths_are_taken_as_paths_not_toml(tmp_path: Path, monkeypatch):
    """Was: --data-root and --site were quoted into a TOML string: a quote broke it and a backslash-t became a TAB."""
    from typer.testing import CliRunner

    from bench.cli.app import app

    odd = tmp_path / 'we"ird\\tdir'
    odd.mkdir()
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["leaderboard", "--no-run", "--results", str(tmp_path / "results"), "--site", str(odd / "site")])
    assert res.exit_code == 0, res.output
    assert (odd / "site" / "index.html").is_file()
    import bench.cli.app as cli

    seen = {}
    monkeypatch.setattr("bench.workflows.suite.run_suite", lambda cfg, *a, **k: seen.setdefault("cfg", cfg) and (_ for _ in ()).throw(SystemExit(0)))
    CliRunner().invoke(cli.app, ["run", "--dataset", "intentonomy", "--data-root", str(odd), "--executor", "serial"])
    assert seen["cfg"].paths.data["intentonomy"] == odd.resolve()
