"""The IntCLIP paper (ECCV 2024) as data: its datasets' names, the paper rows that a reproduced method corresponds
to and the backbone of each paper row, the ablation tables (2-5), Table 6b (HCI with another method) and the numbers
printed in every table (``reference/intclip_eccv2024_tables.csv``). ``reports.layout`` fills its tables from these."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources

import pandas as pd

PAPER_DATASET = {"intentonomy": "Intentonomy", "emotionroi": "EmotionROI", "fi": "FI", "synthetic": "Synthetic intentions"}  # and their order

# Paper rows of Table 1 (dataset intentonomy) and of Table 6a that a reproduced method corresponds to; which one a
# row is compared with, if any, is the one on the row's backbone (PAPER_BACKBONE; layout.paper_delta).
TABLE1_REFERENCE = {
    "query2label": ("Query2Label",),
    "dualcoop": ("DualCoOp",),
    "hleg": ("HLEG",),
    "labcr": ("LabCR",),
    "pipnet": ("PIP-Net",),
    "intclip": ("IntCLIP (RN101)", "IntCLIP (ViT-B/32)"),
    "intclip-official": ("IntCLIP (RN101)", "IntCLIP (ViT-B/32)"),
}
TABLE6A_REFERENCE = {"intclip": ("IntCLIP (R101)",), "intclip-official": ("IntCLIP (R101)",)}

# The backbone (the harness's names) of each paper row a reproduced row can be compared with, per table ("*": every
# row of it). Tables 2-5 and 6a are RN101 (their full IntCLIP is Table 1's RN101 row); Table 6b's IntCLIP (HCI) row
# is Table 1's IntCLIP (ViT-B/32) val row (reference/README.md).
PAPER_BACKBONE: dict[str, dict[str, str]] = {
    "table1": {"DualCoOp": "RN101", "Query2Label": "RN101", "HLEG": "RN101", "LabCR": "RN101", "PIP-Net": "RN101",
               "IntCLIP (RN101)": "RN101",
               "IntCLIP (ViT-B/32)": "ViT-B-32"},
    **{table: {"*": "RN101"} for table in ("table2", "table3", "table4", "table5", "table6a")},
    "table6b": {"IntCLIP (HCI)": "ViT-B-32", "IntCLIP (HCI-FG)": "ViT-B-32", "HLEG [33]": "ViT-B-32",
                "HLEG [33] + HCI": "ViT-B-32"},
}


def paper_backbone(table: str, label: str) -> str | None:
    """The backbone of the paper's row ``label`` of ``table`` (None: not one a reproduced row is compared with)."""
    rows = PAPER_BACKBONE.get(table, {})
    return rows.get(label, rows.get("*"))


def backbone_note(table: str) -> str:
    """The backbones of a table's comparable paper rows, for a caption: "RN101", or "RN101 for DualCoOp, Query2Label
    and IntCLIP (RN101); ViT-B-32 for IntCLIP (ViT-B/32)"."""
    by_backbone: dict[str, list[str]] = {}
    for label, backbone in PAPER_BACKBONE.get(table, {}).items():
        by_backbone.setdefault(backbone, []).append(label)
    if len(by_backbone) == 1:
        return next(iter(by_backbone))
    join = lambda names: ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]  # noqa: E731
    return "; ".join(f"{backbone} for {join(labels)}" for backbone, labels in by_backbone.items())

REFERENCE_FAMILIES = {"multi-label": "Paper: multi-label methods", "intention": "Paper: intention methods", "ours": "Paper: IntCLIP"}


@dataclass(frozen=True)
class Ablation:
    key: str
    title: str
    rows: tuple[tuple[str, tuple[str, ...], str | None], ...]  # (label, method names (first present wins), paper label)


# The paper's "w/o HCI" row (Table 2) has the numbers of its "Consolidation" row (Table 3): consolidated names.
ABLATIONS = (
    Ablation(
        "table2",
        "Component ablation (the paper's Table 2)",
        (
            ("w/o HCI", ("intclip:consolidated",), "w/o HCI"),
            ("w/o SA", ("intclip:no-sa",), "w/o SA"),
            ("w/o SIE, SA", ("intclip:no-sie-sa",), "w/o SIE, SA"),
            ("Full IntCLIP", ("intclip",), "Full IntCLIP"),
        ),
    ),
    Ablation(
        "table3",
        "Class text (the paper's Table 3)",
        (
            ("Fine-grained names", ("intclip:no-hci",), "Fine-Grained"),
            ("Consolidated names", ("intclip:consolidated",), "Consolidation"),
            # the shipped sentences are 5-11 words, 24 of 28 of 6-9: the paper's 6-9-word row is the like-for-like one
            # (the paper's best row, 11-15 words, is the sentence set behind its Full IntCLIP numbers: not the shipped one)
            ("HCI sentences (6-9 words)", ("intclip",), "HCI by LLM 6-9"),
        ),
    ),
    Ablation(
        "table4",
        "Image encoder: branches x trained layers (the paper's Table 4)",
        tuple(
            (f"{b.capitalize()} / {t_label}", (f"intclip:{b}-{t}",) + (("intclip",) if (b, t) == ("dual", "semantic") else ()), f"{b.capitalize()} / {t_ref}")
            for b in ("single", "dual")
            for t, t_label, t_ref in (("none", "none trained", "none trained"), ("all", "all trained", "all trained"), ("semantic", "semantic layers", "semantic layers"))
        ),
    ),
    Ablation(
        "table5",
        "Fusion of the two branches (the paper's Table 5)",
        (
            ("Add", ("intclip:fusion-add", "intclip:no-sa"), None),
            ("Concat + MLP", ("intclip:fusion-concat-mlp",), None),
            ("SA (IntCLIP)", ("intclip",), None),
        ),
    ),
)

# Table 6b, "Generalization of HCI": val F1 of IntCLIP with its HCI sentences (the shipped ones: ``intclip``) and with
# the paper's fine-grained HCI sentences (HCI-FG: no method variant has them; ``intclip:no-hci`` is Table 3's
# fine-grained class names, without HCI), and of HLEG [33] without and with HCI (``hleg``, ``hleg:hci``: its fine label
# embedding initialised from the HCI sentences). Rows without a method are the paper's only.
HCI_GENERALISATION = Ablation(
    "table6b",
    "Generalization of HCI (the paper's Table 6b)",
    (
        ("IntCLIP (HCI)", ("intclip",), "IntCLIP (HCI)"),
        ("IntCLIP (HCI-FG)", (), "IntCLIP (HCI-FG)"),
        ("HLEG [33]", ("hleg",), "HLEG [33]"),
        ("HLEG [33] + HCI", ("hleg:hci",), "HLEG [33] + HCI"),
    ),
)


@cache
def reference_frame() -> pd.DataFrame:
    """The paper's numbers (percent), shipped with the package (copied from shared/reference)."""
    with resources.files("bench.reports").joinpath("reference/intclip_eccv2024_tables.csv").open() as f:
        return pd.read_csv(f)
