"""One writer per folder, with real processes: a second ``ditlab train`` on a live run is refused at once
while the first finishes as if alone; a ``kill -9``-ed trainer leaves no stale lock; a second
``extract-latents`` on one cache is refused and the cache is the lone run's, byte for byte; under torchrun
every rank exits with the refusal.

No race is relied on: the first writer stops at a known point (``paused_cli.py``: after its 2nd checkpoint,
or its 1st shard) and goes on only when the test says so.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from run_helpers import ENV, EXACT_CLI, STEPS, TRAIN, Training, assert_same_training, checkpoint_steps, logged_losses

from ditlab.runlock import LOCK_NAME, lock_folder
from ditlab.training import checkpoint as ckpt

PAUSED_CLI = Path(__file__).with_name("paused_cli.py")
REFUSAL = (r"error: {what} '{folder}' is in use by PID {pid} on {host} since "
           r"\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d[+-]\d\d:\d\d: stop that process or choose another {flag}")


def _refusal(what: str, folder: Path, pid: int, flag: str) -> re.Pattern:
    return re.compile(REFUSAL.format(what=what, folder=re.escape(str(folder)), pid=pid,
                                     host=re.escape(socket.gethostname()), flag=flag))


def _pause(marker: Path, target: str) -> dict[str, str]:
    return {"DITLAB_PAUSE_AFTER": target, "DITLAB_PAUSE_FILE": str(marker)}


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _assert_refused(code: int, stdout: str, stderr: str, pattern: re.Pattern) -> None:
    """Exit code 2, one line naming the holder on stderr, no traceback, nothing else done."""
    assert code == 2, stderr[-2000:]
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and pattern.fullmatch(lines[0]), stderr[-2000:]
    assert stdout == ""


@pytest.mark.slow  # three trainer processes (the reference run is shared with the other reliability tests)
def test_second_trainer_is_refused_while_the_first_finishes_as_if_alone(tmp_path, reference_run):
    run, marker = tmp_path / "run", tmp_path / "paused"
    first = Training(run, "first", cli=PAUSED_CLI,
                     env=_pause(marker, "ditlab.training.checkpoint:save_checkpoint:2"))
    try:
        assert first.wait_for(marker.exists, timeout=300), first.stderr_tail()  # step 4 saved, lock held
        before = _files(run)
        began = time.monotonic()
        second = Training(run, "second")
        code = second.finish(timeout=120)
        took = time.monotonic() - began
        _assert_refused(code, second.stdout(), second.err_path.read_text(),
                        _refusal("run directory", run, first.proc.pid, "--run_dir"))
        assert took < 60, f"refused only after {took:.1f} s"  # at start-up, before any data or model work
        assert _files(run) == before  # the second process changed nothing
    finally:
        Path(f"{marker}.go").touch()
    assert first.finish() == 0, first.stderr_tail()
    assert checkpoint_steps(run) == checkpoint_steps(reference_run.run_dir)
    assert [step for step, _ in logged_losses(run)] == [str(s) for s in range(1, STEPS + 1)]  # each step once
    assert_same_training(run, reference_run.run_dir)  # every checkpoint and logged loss, bit for bit
    assert not (run / LOCK_NAME).exists()


@pytest.mark.slow  # two trainer processes
def test_rerun_after_kill_9_resumes_at_once(tmp_path, reference_run):
    run, marker = tmp_path / "run", tmp_path / "paused"
    first = Training(run, "first", cli=PAUSED_CLI,
                     env=_pause(marker, "ditlab.training.checkpoint:save_checkpoint:2"))
    try:
        assert first.wait_for(marker.exists, timeout=300), first.stderr_tail()
        first.send(signal.SIGKILL)
        assert first.finish() == -signal.SIGKILL
    finally:
        Path(f"{marker}.go").touch()
    # The killed process's lock file stays behind, naming it; its lock went with it.
    assert json.loads((run / LOCK_NAME).read_text())["pid"] == first.proc.pid
    rerun = Training(run, "rerun")
    assert rerun.finish() == 0, rerun.stderr_tail()
    assert f"resuming from {ckpt.checkpoint_dir(run, 4)} (step 4)" in rerun.stdout()
    assert_same_training(run, reference_run.run_dir)
    assert not (run / LOCK_NAME).exists()


EXTRACT = ["extract-latents", "digits", "--autoencoder", "pixel", "--image-size", "8", "--shard-size", "500",
           "--workers", "0", "--no-progress"]


def _extract(out: Path, pause: dict[str, str] | None = None) -> subprocess.Popen:
    cli = PAUSED_CLI if pause else EXACT_CLI
    return subprocess.Popen([sys.executable, str(cli), *EXTRACT, "--out", str(out)], env={**ENV, **(pause or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_second_extraction_is_refused_and_the_cache_is_a_lone_runs(tmp_path):
    lone = _extract(tmp_path / "lone")
    out, err = lone.communicate(timeout=300)
    assert lone.returncode == 0, err[-2000:]
    cache, marker = tmp_path / "cache", tmp_path / "paused"
    first = _extract(cache, _pause(marker, "ditlab.data.latent_cache:write_shard:1"))
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()[1][-2000:]
            time.sleep(0.01)
        second = _extract(cache)
        out, err = second.communicate(timeout=120)
        _assert_refused(second.returncode, out, err, _refusal("latent cache", cache, first.pid, "--out"))
    finally:
        Path(f"{marker}.go").touch()
        out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-2000:]
    assert _files(cache) == _files(tmp_path / "lone")  # every file, byte for byte (and no lock file left)


def test_torchrun_ranks_all_exit_with_the_refusal(tmp_path):
    """torchrun, 2 gloo processes, against a run this test holds: rank 0 is refused, and rank 1 learns it
    through the process group; both exit with code 2 and the one line."""
    run, logs = tmp_path / "run", tmp_path / "logs"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "--log-dir", str(logs), "--redirects", "3", "-m", "ditlab.cli", *TRAIN, "--run_dir", str(run)]
    env = {k: v for k, v in ENV.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    with lock_folder(run):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    pattern = _refusal("run directory", run, os.getpid(), "--run_dir")
    for rank in (0, 1):
        (err_log,) = logs.glob(f"*/attempt_0/{rank}/stderr.log")
        (out_log,) = logs.glob(f"*/attempt_0/{rank}/stdout.log")
        _assert_refused(2, out_log.read_text(), err_log.read_text(), pattern)
    # torchrun's report: a rank exits 2; the agent may SIGTERM (-15) the other once the first has exited, so
    # that rank counts if it had already printed the refusal (checked in its log above)
    codes = re.findall(r"exitcode  : (-?\d+)", done.stderr)
    assert codes and "2" in codes and set(codes) <= {"2", "-15"}, done.stderr[-3000:]
    assert not (run / "config.json").exists()
