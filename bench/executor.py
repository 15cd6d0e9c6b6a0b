"""Kept for one release: the names that lived here, re-exported from their new homes (:mod:`bench.plan`,
:mod:`bench.runner`, :mod:`bench.record`, :mod:`bench.suite`)."""

from bench.plan import (  # noqa: F401
    OFFICIAL_DECODE,
    PlannedRun,
    SuiteOutcome,
    backbone_image_size,
    data_key,
    dataset_config,
    input_decode,
    load_dataset,
    plan_suite,
    triage,
)
from bench.runner import execute_run, record_failure  # noqa: F401
from bench.suite import run_suite  # noqa: F401
