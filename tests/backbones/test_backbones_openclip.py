"""Any open_clip model as a backbone (issue 16, item 4), offline: tiny ResNet and ViT configs registered with
open_clip.add_model_config, a local checkpoint through --pretrained, a fake Hugging Face cache for hf-hub:org/name,
support by tower (plan_suite, create_method, `bench ls backbones`), and what the record stores."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import open_clip
import pytest
import torch
from typer.testing import CliRunner

from bench.backbones.loader import (
    RN101,
    VIT_B_32,
    architecture,
    backbone_rows,
    load_backbone,
    resolve_spec,
    spec_towers,
    weights_identity,
)
from bench.cli.app import app
from bench.cli.common import load as _load
from bench.config import configured_backbone, load_config
from bench.overrides import backbone_key, split_key
from bench.errors import ConfigError, UnknownNameError, WeightsNotFoundError
from bench.pipeline.params import placeholder_task
from bench.registry import BACKBONES, METHODS, create_method

VIT, VIT_QG, RN = "bench-test-tiny-vit", "bench-test-tiny-vit-quickgelu", "bench-test-tiny-rn"
TEXT = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}
CONFIGS = {
    VIT: {"embed_dim": 64, "vision_cfg": {"image_size": 96, "layers": 4, "width": 64, "head_width": 32, "patch_size": 32}, "text_cfg": TEXT},
    VIT_QG: {"embed_dim": 64, "quick_gelu": True, "vision_cfg": {"image_size": 96, "layers": 4, "width": 64, "head_width": 32, "patch_size": 32}, "text_cfg": TEXT},
    RN: {"embed_dim": 64, "vision_cfg": {"image_size": 96, "layers": [1, 1, 1, 1], "width": 8, "head_width": 64}, "text_cfg": TEXT},
}
REV = "0123456789abcdef0123456789abcdef01234567"
CPU = torch.device("cpu")
runner = CliRunner()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> Path:
    """The tiny configs, known to open_clip.create_model / get_model_config / get_tokenizer for the session."""
    folder = tmp_path_factory.mktemp("open-clip-configs")
    for name, cfg in CONFIGS.items():
        (folder / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder)
    return folder


def _state(name: str, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.contiguous() for k, v in open_clip.create_model(name, load_weights=False).state_dict().items()}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def hub_cache(tmp_path, monkeypatch, tiny_models) -> Path:
    """A Hugging Face cache holding bench-test/tiny-vit (safetensors) and bench-test/tiny-rn (.bin), as
    huggingface_hub lays it out: refs/main -> snapshots/<rev>/{open_clip_config.json, weights}."""
    import huggingface_hub
    from safetensors.torch import save_file

    cache = tmp_path / "hf" / "hub"
    for repo, model, weights in (("tiny-vit", VIT, "open_clip_model.safetensors"), ("tiny-rn", RN, "open_clip_pytorch_model.bin")):
        root = cache / f"models--bench-test--{repo}"
        (root / "refs").mkdir(parents=True)
        (root / "refs" / "main").write_text(REV)
        snapshot = root / "snapshots" / REV
        snapshot.mkdir(parents=True)
        preprocess = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
        (snapshot / "open_clip_config.json").write_text(json.dumps({"model_cfg": CONFIGS[model], "preprocess_cfg": preprocess}))
        state = _state(model, seed=7)
        if weights.endswith(".safetensors"):
            save_file(state, snapshot / weights)
        else:
            torch.save(state, snapshot / weights)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))  # read at import: patched for this process
    return cache


def test_open_clip_names_and_hub_repos_resolve_with_their_towers(tiny_models):
    vit, rn = BACKBONES.get(VIT), BACKBONES.get(RN)
    assert (vit.name, vit.model_name, vit.default_pretrained, vit.openai, vit.quickgelu_by_tag) == (VIT, VIT, "", False, True)
    assert (rn.model_name, rn.quickgelu_by_tag) == (RN, False)
    assert spec_towers(vit) == ("vit", "clip") and spec_towers(rn) == ("resnet", "clip")
    assert BACKBONES.get("RN101") is RN101 and BACKBONES.get("ViT-B-32") is VIT_B_32  # registered names win
    b16 = BACKBONES.get("ViT-B-16")
    assert (b16.default_pretrained, b16.quickgelu_by_tag) == ("openai", True) and spec_towers(b16) == ("vit", "clip")
    hub = BACKBONES.get("hf-hub:org/name")
    assert (hub.model_name, hub.default_pretrained) == ("hf-hub:org/name", "hf-hub:org/name")
    assert weights_identity(hub, None, None) == "hub:org/name"
    assert "hf-hub:org/name" in BACKBONES and VIT in BACKBONES and "hf-hub:nope" not in BACKBONES
    assert resolve_spec("not-a-model") is None and resolve_spec("hf-hub:a/b/c") is None
    with pytest.raises(UnknownNameError, match=r"unknown backbone 'ViT-B-61'; did you mean 'ViT-B-16'"):
        BACKBONES.check("ViT-B-61")


def test_quickgelu_exactly_when_the_tag_says_so():
    b16 = BACKBONES.get("ViT-B-16")
    assert architecture(b16, "openai") == "ViT-B-16-quickgelu"  # open_clip's openai tag: quick_gelu=True
    assert architecture(b16, "laion2b_s34b_b88k") == "ViT-B-16"  # LAION weights: nn.GELU
    assert architecture(b16, "/w/ViT-B-16.pt") == "ViT-B-16" and architecture(b16, "none") == "ViT-B-16"
    assert architecture(BACKBONES.get("ViT-B-16-quickgelu"), "metaclip_fullcc") == "ViT-B-16-quickgelu"
    assert architecture(RN101, "none") == "RN101-quickgelu" and architecture(RN101, "/w/rn101.pt") == "RN101-quickgelu"


def test_config_accepts_open_clip_names_and_requires_their_weights(tiny_models, write_config):
    cfg = load_config(write_config(methods=("zeroshot",)), {
        "suite.backbone": VIT, "backbones.bench-test-tiny-vit.pretrained": "none", "leaderboard.backbone": "hf-hub:org/name",
    })
    assert cfg.suite.backbone == VIT and cfg.backbone_pretrained(VIT) == "none"
    with pytest.raises(ConfigError) as err:
        load_config(write_config(methods=("zeroshot",)), {"suite.backbone": VIT})
    assert str(err.value).endswith(
        f"suite.backbone: backbone '{VIT}' has no default weights (no 'openai' tag; open_clip has no pretrained tag for "
        f"it): pass --pretrained TAG|PATH|local-dir:DIR|none or set backbones.{VIT}.pretrained in bench.toml"
    )
    tags = open_clip.list_pretrained_tags_by_model("ViT-B-16-SigLIP")
    assert tags and "openai" not in tags
    result = runner.invoke(app, ["run", "--config", str(write_config(methods=("zeroshot",))), "--backbone", "ViT-B-16-SigLIP"])
    assert isinstance(result.exception, ConfigError)
    assert f"backbone 'ViT-B-16-SigLIP' has no default weights (no 'openai' tag; its open_clip tags: {', '.join(tags)})" in str(result.exception)
    with pytest.raises(ConfigError, match=r"suite.backbone: backbone 'hf-hub:org/name' takes its weights from its hub repo, not 'openai': a checkpoint"):
        load_config(write_config(methods=("zeroshot",)), {"suite.backbone": "hf-hub:org/name", backbone_key("hf-hub:org/name"): "openai"})


def test_pretrained_flag_is_a_recorded_override_of_the_backbone_in_use(tiny_models, write_config):
    path = write_config(methods=("zeroshot",))
    cfg = _load(path, backbone=VIT, pretrained="none")
    assert cfg.overrides[f"backbones.{VIT}.pretrained"] == "none" and cfg.backbone_pretrained(VIT) == "none"
    assert configured_backbone(path) == "tiny-clip"  # the file's suite.backbone
    assert _load(path, pretrained="none").backbone_pretrained("tiny-clip") == "none"
    board = _load(path, values={"leaderboard.backbone": RN}, pretrained="none", pretrained_for="leaderboard")
    assert board.backbone_pretrained(RN) == "none" and board.backbone_pretrained("tiny-clip") is None
    assert backbone_key("ViT-L-14.x") == 'backbones."ViT-L-14.x".pretrained'
    assert split_key('backbones."ViT-L-14.x".pretrained') == ["backbones", "ViT-L-14.x", "pretrained"]


def _planned(cfg):
    from bench.pipeline.plan import plan_suite

    return plan_suite(cfg)[0]


def test_support_is_by_tower_in_the_plan_and_when_a_method_is_built(tiny_models, write_config):
    overrides = {"suite.backbone": VIT, f"backbones.{VIT}.pretrained": "none"}
    with pytest.raises(ConfigError) as err:
        _planned(load_config(write_config(methods=("zeroshot", "dualcoop")), overrides))
    assert str(err.value) == (
        f"method 'dualcoop' cannot run on backbone '{VIT}': dualcoop reads the dense tokens of a ResNet image tower; "
        "the backbone has a ViT image tower (open_clip VisionTransformer, class-token pooling)"
    )
    plans = _planned(load_config(write_config(methods=("zeroshot", "intclip")), overrides))
    assert [p.method for p in plans] == ["zeroshot", "intclip"]
    assert plans[0].identity["backbone"] == {"name": VIT, "pretrained": "none", "weights": "none", "architecture": VIT}
    assert [p.method for p in _planned(load_config(write_config(methods=("dualcoop",)), {"suite.backbone": RN, f"backbones.{RN}.pretrained": "none"}))] == ["dualcoop"]
    backbone = load_backbone(BACKBONES.get(VIT), "none")
    task = placeholder_task(3)
    with pytest.raises(ConfigError, match=r"method 'dualcoop' cannot run on backbone 'bench-test-tiny-vit': dualcoop reads"):
        create_method("dualcoop", METHODS.get("dualcoop").Config(), backbone, task, CPU)
    intclip = create_method("intclip", METHODS.get("intclip").Config(), backbone, task, CPU)
    block = sum(p.numel() for p in backbone.model.visual.transformer.resblocks[0].parameters())
    sa = 2 * (64 * 8 + 8) + 64 * 64 + 64 + 1
    assert intclip.param_counts()["learnable"] == 3 * block + sa + 2 * 3 * 16 * 64  # last 3 blocks + SA + prompts


def test_ls_backbones_lists_towers_tags_and_methods(tiny_models):
    rows = {r["name"]: r for r in backbone_rows(BACKBONES, METHODS, "bench-test-*")}
    assert set(rows) == {VIT, VIT_QG, RN}
    assert rows[VIT] == {"name": VIT, "registered": False, "image_tower": "vit", "text_tower": "clip", "default": None,
                         "tags": [], "methods": ["hleg", "intclip", "intclip-official", "labcr", "label-prior", "linear-probe", "pipnet", "query2label", "zeroshot"]}
    assert "dualcoop" in rows[RN]["methods"] and rows[RN]["image_tower"] == "resnet"
    registered = backbone_rows(BACKBONES, METHODS)
    assert [r["name"] for r in registered[:4]] == ["RN101", "RN50", "ViT-B-32", "tiny-clip"]
    assert registered[3]["tags"] == ["package:bench-tiny-clip.pt"] and "dualcoop" in registered[3]["methods"]
    assert "bench-tiny-clip" not in {r["name"] for r in registered}  # tiny-clip's own config is listed once, as tiny-clip
    assert next(r for r in registered if r["name"] == "ViT-B-32")["tags"][0] == "openai"
    output = runner.invoke(app, ["ls", "backbones", "bench-test-tiny-*"]).output
    lines: dict[str, str] = {}
    name = ""
    for line in (line for line in output.splitlines() if line.count("│") > 2):  # a wrapped cell continues on the next line
        name = line.split("│")[1].strip() or name
        lines[name] = lines.get(name, "") + line
    assert set(lines) == {VIT, VIT_QG, RN}
    assert "intclip" in lines[VIT] and "dualcoop" not in lines[VIT] and "│ vit " in lines[VIT]
    assert "dualcoop" in lines[RN] and "│ resnet " in lines[RN]
    assert runner.invoke(app, ["ls", "methods", "dualcoop"]).output.split() == ["dualcoop"]


@pytest.mark.slow
def test_local_checkpoint_runs_end_to_end_and_the_record_names_model_tag_and_hash(tiny_models, write_config, tmp_path):
    weights = tmp_path / "tiny-vit.pt"
    torch.save(_state(VIT, seed=3), weights)
    cfg = write_config(methods=("zeroshot", "intclip"), extra="[methods.intclip]\nepochs = 1\nbatch_size = 32\n")
    result = runner.invoke(app, ["run", "--config", str(cfg), "--backbone", VIT, "--pretrained", str(weights), "--no-progress"])
    assert result.exit_code == 0, result.output
    records = {}
    for path in (tmp_path / "results" / "runs").glob("*/result.json"):
        record = json.loads(path.read_text())
        records[record["method"]["name"]] = record
    assert set(records) == {"zeroshot", "intclip"}
    sha = _sha(weights)
    for record in records.values():
        assert record["backbone"] == {
            "name": VIT, "model_name": VIT, "pretrained": str(weights), "weights_sha256": sha, "weights_id": f"sha256:{sha}",
            "architecture": VIT, "activation": "gelu", "image_size": 96,
        }
        assert record["config_file"]["overrides"][f"backbones.{VIT}.pretrained"] == str(weights)
    assert records["intclip"]["training"]["epochs_run"] == 1 and records["zeroshot"]["params"]["learnable"] == 0
    loaded = load_backbone(BACKBONES.get(VIT), str(weights))
    assert torch.equal(loaded.model.visual.proj, torch.load(weights, weights_only=True)["visual.proj"])


@pytest.mark.parametrize("repo, model, file", [("tiny-vit", VIT, "open_clip_model.safetensors"), ("tiny-rn", RN, "open_clip_pytorch_model.bin")])
def test_hf_hub_repo_loads_offline_from_the_cache_with_its_hash(hub_cache, repo, model, file):
    name = f"hf-hub:bench-test/{repo}"
    backbone = load_backbone(BACKBONES.get(name))
    weights = hub_cache / f"models--bench-test--{repo}" / "snapshots" / REV / file
    assert backbone.describe() == {
        "name": name, "model_name": name, "pretrained": name, "weights_sha256": _sha(weights), "weights_id": f"hub:bench-test/{repo}",
        "architecture": name, "activation": "gelu", "image_size": 96,
    }
    assert backbone.mean == (0.5, 0.5, 0.5) and backbone.std == (0.25, 0.25, 0.25)  # the repo's preprocess_cfg
    expected = _state(model, seed=7)
    assert all(torch.equal(v, expected[k]) for k, v in backbone.model.state_dict().items())
    assert spec_towers(BACKBONES.get(name)) == (("vit" if repo == "tiny-vit" else "resnet"), "clip")
    method = "dualcoop" if repo == "tiny-rn" else "intclip"
    assert create_method(method, METHODS.get(method).Config(), backbone, placeholder_task(3), CPU).name == method
    random = load_backbone(BACKBONES.get(name), "none")
    assert random.describe()["weights_sha256"] is None and random.weights_id == "none"


def test_a_missing_hub_repo_fails_fast_naming_it(hub_cache, write_config):
    from bench.pipeline.plan import backbone_image_size

    name = "hf-hub:bench-test/missing"
    with pytest.raises(WeightsNotFoundError, match=r"^hf-hub:bench-test/missing: its open_clip_config.json is not in the Hugging Face cache"):
        backbone_image_size(name)
    with pytest.raises(WeightsNotFoundError, match=r"^hf-hub:bench-test/missing: could not load weights 'hf-hub:bench-test/missing'"):
        load_backbone(BACKBONES.get(name))
    with pytest.raises(WeightsNotFoundError, match="hf-hub:bench-test/missing"):
        _planned(load_config(write_config(methods=("zeroshot",)), {"suite.backbone": name}))


def test_a_tag_loads_from_the_cache_with_the_hash_of_the_file_open_clip_read(hub_cache, monkeypatch):
    """A pretrained tag (registered here, as open_clip lists its own: weights in a hub repo, trained with QuickGELU)
    builds the -quickgelu sibling and records the sha256 of the cached file; its run identity stays the tag."""
    from open_clip import pretrained

    tag = {"hf_hub": "bench-test/tiny-vit/", "quick_gelu": True, "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}
    for model in (VIT, VIT_QG):
        monkeypatch.setitem(pretrained._PRETRAINED, model, {"fake_tag": tag})
    spec = BACKBONES.get(VIT)
    assert spec.default_pretrained == "" and architecture(spec, "fake-tag") == VIT_QG
    backbone = load_backbone(spec, "fake-tag")
    weights = hub_cache / "models--bench-test--tiny-vit" / "snapshots" / REV / "open_clip_model.safetensors"
    assert backbone.describe() == {
        "name": VIT, "model_name": VIT, "pretrained": "fake-tag", "weights_sha256": _sha(weights), "weights_id": "tag:fake-tag",
        "architecture": VIT_QG, "activation": "quick_gelu", "image_size": 96,
    }
    assert weights_identity(spec, "fake-tag", None) == "tag:fake-tag"
    expected = _state(VIT, seed=7)
    assert all(torch.equal(v, expected[k]) for k, v in backbone.model.state_dict().items())


@pytest.mark.slow
def test_tune_refuses_an_unsupported_pair_before_it_decodes_anything(tiny_models, write_config, monkeypatch, tmp_path):
    from bench.workflows import tune

    monkeypatch.setattr(tune, "load_dataset", lambda *a, **k: pytest.fail("the dataset was loaded"))
    cfg = load_config(write_config(methods=("dualcoop",)), {"suite.backbone": VIT, backbone_key(VIT): "none"})
    with pytest.raises(ConfigError, match=f"method 'dualcoop' cannot run on backbone '{VIT}'"):
        tune.run_tune(cfg, "dualcoop", "synthetic", None)
