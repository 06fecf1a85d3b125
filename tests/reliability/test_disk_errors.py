"""Disk full or an unwritable run directory: one clear line, exit 2, the previous checkpoint intact and
resumable, no temporary folder left behind."""
from __future__ import annotations

import errno
import hashlib
import resource
import signal

from run_helpers import assert_identical, load_checkpoint

from ditlab.cli import main
from ditlab.training import checkpoint as ckpt

ARGS = ["train", "--preset", "digits-tiny", "--global_batch_size", "16", "--ckpt_every", "2", "--log_every", "1"]


def _hashes(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _one_error_line(err: str) -> str:
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ")
    return last


def test_disk_full_at_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch, capsys):
    straight, run = tmp_path / "straight", tmp_path / "run"
    assert main([*ARGS, "--steps", "4", "--run_dir", str(straight)]) == 0
    real_save, calls = ckpt.save_file, {"n": 0}

    def fill_disk_on_second_checkpoint(tensors, path):
        calls["n"] += 1
        if calls["n"] >= 3:  # calls 1-2: model and EMA of step 2; call 3: model of step 4
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(tensors, path)

    with monkeypatch.context() as m:
        m.setattr(ckpt, "save_file", fill_disk_on_second_checkpoint)
        assert main([*ARGS, "--steps", "4", "--run_dir", str(run)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "could not write checkpoint for step 4" in line and "disk full" in line
    assert "the previous checkpoint is intact" in line
    good = ckpt.checkpoint_dir(run, 2)
    assert ckpt.latest_checkpoint(run) == good
    assert not list((run / ckpt.CHECKPOINTS).glob(".tmp-*"))
    assert_identical(load_checkpoint(good), load_checkpoint(ckpt.checkpoint_dir(straight, 2)))
    # space freed: the same command resumes from step 2 and ends where the uninterrupted run did
    assert main([*ARGS, "--steps", "4", "--run_dir", str(run)]) == 0
    assert_identical(load_checkpoint(ckpt.checkpoint_dir(run, 4)), load_checkpoint(ckpt.checkpoint_dir(straight, 4)))


def test_a_real_failed_write_is_a_clear_error(tmp_path, capsys):
    """No mock: a file-size limit makes the kernel refuse the write (EFBIG), as a full disk would. torch and
    safetensors wrap that error in their own exception types; the trainer must still say it in one line."""
    run = tmp_path / "run"
    assert main([*ARGS, "--steps", "2", "--run_dir", str(run)]) == 0
    good = ckpt.latest_checkpoint(run)
    before = _hashes(good)
    capsys.readouterr()
    # state.pt (Adam moments: twice the weights) is the largest file; the limit lets the weights through
    limit = (good / "state.pt").stat().st_size // 2
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        code = main([*ARGS, "--steps", "4", "--run_dir", str(run)])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    assert code == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "could not write checkpoint for step 4" in line and "File too large" in line
    assert ckpt.latest_checkpoint(run) == good and _hashes(good) == before
    assert not list((run / ckpt.CHECKPOINTS).glob(".tmp-*"))
    assert main([*ARGS, "--steps", "4", "--run_dir", str(run)]) == 0
    assert ckpt.latest_checkpoint(run).name == "step_0000004"


def test_disk_full_while_logging_names_the_file_and_the_resume_point(tmp_path, monkeypatch, capsys):
    import builtins

    import ditlab.training.logger as logger_module

    run = tmp_path / "run"
    real_open = builtins.open

    def full_after_step_3(path, mode="r", *args, **kwargs):
        if "a" in mode and str(path).endswith("metrics.csv") and len(real_open(path).read().splitlines()) > 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(logger_module, "open", full_after_step_3, raising=False)
    assert main([*ARGS, "--steps", "6", "--run_dir", str(run)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    good = ckpt.checkpoint_dir(run, 2)
    assert line == (f"error: No space left on device: '{run / 'metrics.csv'}': free space or fix permissions, "
                    f"then rerun the same command (it resumes from {good})")
    assert ckpt.latest_checkpoint(run) == good
