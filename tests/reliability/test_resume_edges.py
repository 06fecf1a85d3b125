"""Resume in the less common cases: a first run that failed at a typo, a run directory that was moved, a
damaged newest checkpoint, a crash half-way through deleting or replacing a checkpoint."""
from __future__ import annotations

import errno
import shutil

import pytest
import torch
from run_helpers import assert_identical, load_checkpoint
from safetensors import SafetensorError

from ditlab.cli import main
from ditlab.training import checkpoint as ckpt

ARGS = ["train", "--preset", "digits-tiny", "--global_batch_size", "16", "--ckpt_every", "2", "--log_every", "1"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    run = tmp_path_factory.mktemp("edges") / "straight"
    assert main([*ARGS, "--steps", "4", "--run_dir", str(run)]) == 0
    return run


def test_a_first_run_that_failed_at_a_typo_can_be_rerun_fixed(tmp_path, capsys):
    run = tmp_path / "run"
    assert main([*ARGS, "--steps", "2", "--data", str(tmp_path / "digitz"), "--run_dir", str(run)]) == 2
    assert (run / "config.json").is_file()  # written before the data was opened
    assert main([*ARGS, "--steps", "2", "--run_dir", str(run)]) == 0  # nothing trained: the new settings stand


def test_a_moved_run_directory_resumes_from_its_new_place(straight, tmp_path, capsys):
    old, new = tmp_path / "old", tmp_path / "elsewhere" / "new"
    assert main([*ARGS, "--steps", "2", "--run_dir", str(old)]) == 0
    new.parent.mkdir()
    shutil.move(old, new)
    capsys.readouterr()
    assert main([*ARGS, "--steps", "4", "--run_dir", str(new)]) == 0
    assert f"resuming from {ckpt.checkpoint_dir(new, 2)} (step 2)" in capsys.readouterr().out
    assert_identical(load_checkpoint(ckpt.checkpoint_dir(new, 4)), load_checkpoint(ckpt.checkpoint_dir(straight, 4)))


def test_a_damaged_newest_checkpoint_is_named_and_deleting_it_resumes_from_the_one_before(straight, tmp_path, capsys):
    run = tmp_path / "run"
    assert main([*ARGS, "--steps", "4", "--run_dir", str(run)]) == 0
    newest = ckpt.checkpoint_dir(run, 4)
    (newest / "meta.json").write_text('{"step": 4, "mod')
    capsys.readouterr()
    assert main([*ARGS, "--steps", "4", "--run_dir", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f"error: checkpoint '{newest}' has a damaged meta.json (JSONDecodeError): delete that folder "
                   f"to resume from the previous checkpoint")
    shutil.rmtree(newest)  # what the message says; `latest` now names a missing folder
    assert main([*ARGS, "--steps", "4", "--run_dir", str(run)]) == 0
    assert f"resuming from {ckpt.checkpoint_dir(run, 2)} (step 2)" in capsys.readouterr().out
    assert_identical(load_checkpoint(newest), load_checkpoint(ckpt.checkpoint_dir(straight, 4)))


def _save(run, step, value, keep=5):
    w = {"w": torch.full((3,), float(value))}
    return ckpt.save_checkpoint(run, step, w, w, {"step": step}, {"model": {}}, keep_last=keep)


def test_a_half_deleted_or_half_replaced_checkpoint_is_never_taken(tmp_path):
    _save(tmp_path, 1, 1.0)
    two = _save(tmp_path, 2, 2.0)
    # a crash while pruning step 2 (meta.json goes first, yet say only state.pt went) and with the pointer lost
    (two / "state.pt").unlink()
    (tmp_path / ckpt.CHECKPOINTS / ckpt.LATEST).unlink()
    assert ckpt.latest_checkpoint(tmp_path) == ckpt.checkpoint_dir(tmp_path, 1)
    # a crash between moving the old copy of a re-saved step aside and renaming the new one in
    three = _save(tmp_path, 3, 3.0)
    three.rename(tmp_path / ckpt.CHECKPOINTS / ".old-step_0000003-999999")
    assert ckpt.latest_checkpoint(tmp_path) == ckpt.checkpoint_dir(tmp_path, 1)
    _save(tmp_path, 4, 4.0)  # the next save clears what the crashed process left
    assert not list((tmp_path / ckpt.CHECKPOINTS).glob(".old-*"))


def test_io_error_finds_the_cause_behind_wrapped_write_failures():
    full = OSError(errno.ENOSPC, "No space left on device")
    try:
        try:
            raise full
        except OSError:
            # implicit chaining (only __context__) on purpose, as torch.save does: no `from`
            raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos")  # noqa: B904
    except RuntimeError as wrapped:
        assert ckpt.io_error(wrapped) is full
    found = ckpt.io_error(SafetensorError("Error while serializing: I/O error: File too large (os error 27)"))
    assert found.errno == errno.EFBIG and found.strerror == "File too large"
    assert ckpt.io_error(ValueError("not an I/O problem")) is None
    try:
        try:
            raise full
        except OSError:
            raise ValueError("a different problem") from None  # context suppressed: not an I/O failure
    except ValueError as other:
        assert ckpt.io_error(other) is None
