"""Kept for one release: the names that lived here, re-exported from their new homes (:mod:`bench.plan`,
:mod:`bench.runner`, :mod:`bench.record`, :mod:`bench.suite`)."""

from bench.plan import (  # noqa: F401
    OFFICIAL_DECODE,
    PlannedRun,
    SuiteOutcome,
    backbone_image_size,
    data_key,
    input_decode,
    load_dataset,
    plan_suite,
    triage,
)
from bench.runner import execute_run, record_failure  # noqa: F401
from bench.suite import run_suite  # noqa: F401


def dataset_config(cfg, name, overrides=None):  # noqa: ANN001 - the old signature, kept for one release
    """Moved to :meth:`bench.config.BenchConfig.dataset_config`."""
    return cfg.dataset_config(name, overrides)
