"""``exact_cli.py`` that stops after the N-th call of one function until the test lets it go on.

    DITLAB_PAUSE_AFTER=ditlab.training.checkpoint:save_checkpoint:2 DITLAB_PAUSE_FILE=/tmp/p \\
        python paused_cli.py train ...

Once the 2nd call of ``ditlab.training.checkpoint.save_checkpoint`` has returned, the process creates
``/tmp/p`` and waits until ``/tmp/p.go`` exists. The test then knows exactly where the process stands (its
lock taken, checkpoint 2 on disk) and can start a second writer or SIGKILL it at that moment, however fast
or slow the machine is.
"""
import importlib
import os
import sys
import time

import exact_cli  # noqa: F401  (full-precision metrics.csv, like the reference run)


def _pause_after(target: str, marker: str) -> None:
    module_name, name, nth = target.split(":")
    module = importlib.import_module(module_name)
    original, calls = getattr(module, name), 0

    def paused(*args, **kwargs):
        nonlocal calls
        result = original(*args, **kwargs)
        calls += 1
        if calls == int(nth):
            open(marker, "w").close()
            deadline = time.monotonic() + 600
            while not os.path.exists(marker + ".go"):
                if time.monotonic() > deadline:
                    sys.exit("paused_cli: nobody let the process go on within 600 s")
                time.sleep(0.01)
        return result

    setattr(module, name, paused)


if __name__ == "__main__":
    from ditlab.cli import main

    _pause_after(os.environ["DITLAB_PAUSE_AFTER"], os.environ["DITLAB_PAUSE_FILE"])
    sys.exit(main(sys.argv[1:]))
