"""SIGKILL at random moments, then rerun the same command: the finished run is bit-identical to one that
was never interrupted (every checkpoint's weights, EMA, optimiser, LR schedule, RNG states and data
position, and every logged loss)."""
from __future__ import annotations

import itertools
import os
import random
import signal
import time

import pytest
from run_helpers import STEPS, Training, assert_same_training

from ditlab.training import checkpoint as ckpt

TRIALS = 5


def _step(path) -> int:
    return int(path.name.split("_")[1]) if path is not None else 0


@pytest.mark.slow
def test_sigkill_at_random_moments_resumes_bit_identical(tmp_path, reference_run):
    """Each kill lands at a random moment of the process that resumed from the previous kill (so process
    starts stay few); a run that ends before its kill is finished, compared, and a new one begun."""
    seed = int(os.environ.get("DITLAB_KILL_SEED", time.time_ns() % 2**32))
    rng = random.Random(seed)
    ref = reference_run

    def anywhere(t: Training) -> str:  # start-up included (imports, data, latent cache, model, restore)
        delay = rng.uniform(0, ref.startup_s)
        t.wait_for(lambda: False, timeout=delay)
        return f"{delay:.2f}s after launch"

    def during_a_step(t: Training) -> str:
        """After a random step k still ahead, a random fraction of a step later: inside step k + 1 or the
        checkpoint of step k."""
        first = _step(ckpt.latest_checkpoint(t.run_dir)) + 1
        if first >= STEPS:
            return "at once (nothing left to train)"
        k, phase = rng.randint(first, STEPS - 1), rng.random()
        assert t.wait_for(t.training_started, timeout=300), t.stderr_tail()
        began = time.monotonic()
        t.wait_for(lambda: t.logged_step() >= k, timeout=300)
        per_step = (time.monotonic() - began) / (k - first + 1)
        t.wait_for(lambda: False, timeout=phase * per_step)
        return f"{phase:.2f} of a step after step {k}"

    def mid_checkpoint_write(t: Training) -> str:  # as soon as this process's temporary checkpoint folder appears
        root, mine = t.run_dir / ckpt.CHECKPOINTS, f"-{t.proc.pid}"  # not one a killed process left behind
        seen = t.wait_for(lambda: root.is_dir() and any(p.name.startswith(".tmp-") and p.name.endswith(mine)
                                                        for p in os.scandir(root)), timeout=300, poll=0.0002)
        return "while a checkpoint was being written" if seen else "at the end (no write seen)"

    def finish(run, expected) -> None:
        final = Training(run, "final")
        assert final.finish() == 0, final.stderr_tail()
        check_resumed_from(final, expected)
        assert_same_training(run, ref.run_dir)

    def check_resumed_from(t: Training, expected) -> None:
        if t.training_started() and expected is not None:  # it got as far as restoring: from the right one
            assert f"resuming from {expected} " in t.stdout(), t.stdout()

    plan = itertools.cycle([anywhere, during_a_step, mid_checkpoint_write, during_a_step, during_a_step])
    kills: list[str] = []
    run, expected, launches = None, None, 0
    while len(kills) < TRIALS and launches < 4 * TRIALS:
        if run is None:
            run, expected = tmp_path / f"run{launches}", None
        launches += 1
        t = Training(run, f"launch{launches}")
        when = next(plan)(t)
        killed = t.send(signal.SIGKILL)
        code = t.finish()
        check_resumed_from(t, expected)
        if not killed:  # it finished first: compare it, and start a new run for the next kills
            assert code == 0, t.stderr_tail()
            assert_same_training(run, ref.run_dir)
            run = None
            continue
        assert code == -signal.SIGKILL
        expected = ckpt.latest_checkpoint(run)
        root = run / ckpt.CHECKPOINTS
        torn = sorted(p.name for p in root.glob(".tmp-*")) if root.is_dir() else []
        kills.append(f"{run.name} killed {when}: newest complete checkpoint "
                     f"{expected.name if expected else None}, torn {torn or 'none'}")
    if run is not None:
        finish(run, expected)
    print(f"\nSIGKILL trials (DITLAB_KILL_SEED={seed}):\n  " + "\n  ".join(kills))
    assert len(kills) >= TRIALS, f"only {len(kills)} kills landed in {launches} launches (seed {seed}): {kills}"
