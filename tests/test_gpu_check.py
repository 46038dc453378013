"""scripts/gpu_check.sh, the one-run GPU check: without a GPU it says so and exits 2 before running anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the script runs its checks and benchmarks")
def test_the_gpu_check_stops_at_once_without_a_gpu(tmp_path: Path) -> None:
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(tmp_path / "out")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "no CUDA GPU" in done.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["gpu-check-env.txt"]
