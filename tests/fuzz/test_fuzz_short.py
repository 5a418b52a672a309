"""A short coverage-guided pass of every fuzz target (`make fuzz` runs them for longer).
Bounded in runs and in time; a crash, a per-input hang over 10 s or RSS over 2 GiB fails."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz.targets import TARGETS

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_short_fuzz_pass(target: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tests.fuzz.run", target, "-runs=20000", "-max_total_time=3",
         "-timeout=10", "-rss_limit_mb=2048", f"-artifact_prefix={tmp_path}/"],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    findings = [p.name for p in tmp_path.iterdir()]
    assert result.returncode == 0, f"{findings}\n{result.stderr[-4000:]}"
    assert "Done " in result.stderr
    assert findings == []
