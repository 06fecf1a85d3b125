"""The uninterrupted reference run that the interrupted ones are compared with (made once per session)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from run_helpers import Training


@dataclass
class Reference:
    run_dir: Path
    startup_s: float  # launch -> first step
    training_s: float  # first step -> exit


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory) -> Reference:
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    t = Training(run_dir, "reference")
    assert t.wait_for(t.training_started, timeout=300), t.stderr_tail()
    began = time.monotonic()
    code = t.finish()
    assert code == 0, t.stderr_tail()
    return Reference(run_dir, began - t.started, time.monotonic() - began)
