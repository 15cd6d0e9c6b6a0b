"""`pip install .` (not editable) installs methods/, datasets/, reports/ into the bench namespace, with the
shipped tiny CLIP and no top-level `datasets` module that would shadow Hugging Face's."""

import pytest
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


@pytest.mark.slow
def test_non_editable_install_layout(tmp_path: Path):
    target = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--quiet", "--target", str(target), str(REPO)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    for rel in ("bench/methods/dualcoop.py", "bench/datasets/synthetic.py", "bench/reports/tables.py", "bench/assets/bench-tiny-clip.pt", "bench/default.toml"):
        assert (target / rel).is_file(), rel
    assert not (target / "datasets").exists() and not (target / "methods").exists()
    check = "import bench.methods.linear_probe, bench.datasets.base, bench.reports.tables; print(bench.__file__)"
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=tmp_path, env={"PYTHONPATH": str(target)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith(str(target))
