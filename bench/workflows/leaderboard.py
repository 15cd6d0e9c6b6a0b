"""`bench leaderboard`, the nightly job: run what is missing of the leaderboard suite, then regenerate the site.

Exit codes (see README): 0 fine, 1 some runs failed (the site is still regenerated from what exists), 3 a
regression beyond the tolerance was flagged (takes precedence over 1), 2 bad input.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import Console

from bench.reports.escape import rich_text as escape  # control and bidi characters removed too
from bench.config import BenchConfig
from bench.store.provenance import git_state

EXIT_RUNS_FAILED = 1
EXIT_REGRESSION = 3


@dataclass
class LeaderboardOutcome:
    site: object  # reports.site.SiteOutcome
    failed: dict[str, str]

    @property
    def exit_code(self) -> int:
        if self.site.regressions:
            return EXIT_REGRESSION
        return EXIT_RUNS_FAILED if self.failed else 0


def suite_config(cfg: BenchConfig) -> BenchConfig:
    """The config with ``[suite]`` replaced by the leaderboard's suite (unset keys keep ``[suite]``'s)."""
    lb = cfg.leaderboard
    out = cfg.model_copy(deep=True)
    out.source = cfg.source
    for key in ("methods", "datasets", "seeds", "backbone"):
        value = getattr(lb, key)
        if value is not None:
            setattr(out.suite, key, value)
    out.suite.train_fraction = out.suite.shots = out.suite.label_proportion = None  # the leaderboard: whole splits
    return out


def run_leaderboard(cfg: BenchConfig, console: Console, ray_address: str | None = None, run: bool = True) -> LeaderboardOutcome:
    from bench.reports import compare
    from bench.store import collection
    from bench.reports.site import HISTORY, build_site

    suite_cfg = suite_config(cfg)
    failed: dict[str, str] = {}
    if run:
        from bench.workflows.suite import run_suite

        failed = dict(run_suite(suite_cfg, console, ray_address).failed)
    s = suite_cfg.suite
    records, bad = collection.load_results(cfg.paths.results)
    for e in bad:
        console.print(f"[yellow]skipped corrupt result: {escape(str(e))}[/]")
    records = [
        r for r in records if r.method.name in s.methods and r.dataset.name in s.datasets and r.backbone["name"] == s.backbone
        and (r.seed is None or r.seed in s.seeds) and r.label_protocol is None and r.limit is None
    ]
    summary = collection.summarise(collection.results_frame(records))
    lb = cfg.leaderboard
    if lb.bootstrap and not summary.empty:
        summary = compare.add_significance(summary, records, cfg.paths.results, lb.bootstrap, reference=cfg.report.reference,
                                          test=cfg.report.test, alpha=cfg.report.alpha)
    from bench.store import locks

    # one regeneration at a time: each compares with the history record the previous one wrote
    lock = locks.wait_lock(lb.site / HISTORY, console.print)
    try:
        site = build_site(lb.site, records, summary, tolerance=lb.tolerance, metric=lb.metric, split=lb.split,
                          git_sha=git_state().get("git_sha"))
    finally:
        lock.release()
    return LeaderboardOutcome(site, failed)
