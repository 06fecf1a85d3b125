"""Multi-rank extraction on the gloo backend (2 CPU processes) and the CLI end to end."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from latent_fakes import FakeAutoencoder, cache_arrays, extraction_worker

from ditlab.cli import main
from ditlab.data import build_dataset
from ditlab.data.extract import extract_latents
from ditlab.data.latent_cache import LatentCache

# Runs the CLI with the shard writer wrapped so that the process SIGKILLs itself after the first shard.
_KILLED_AFTER_FIRST_SHARD = """
import os, signal, sys
from ditlab.data import latent_cache as lc
from ditlab.cli import main
write = lc.write_shard
def write_then_die(*args, **kwargs):
    write(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
lc.write_shard = write_then_die
sys.exit(main(sys.argv[1:]))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _assert_same_cache(a, b):
    arrays_a, arrays_b = cache_arrays(a), cache_arrays(b)
    assert arrays_a.keys() == arrays_b.keys() and len(arrays_a) > 1
    for k in arrays_a:
        np.testing.assert_array_equal(arrays_a[k], arrays_b[k], err_msg=k)
    index_a, index_b = (json.loads((p / "index.json").read_text()) for p in (a, b))
    assert index_a == index_b


def test_two_gloo_ranks_give_the_same_cache_as_one(tmp_path, image_folder):
    # Posterior samples too: the noise belongs to the batch, not to the rank that encodes it.
    kw = dict(image_size=32, batch_size=2, shard_size=3, sample=True, seed=3)
    (tmp_path / "one").mkdir()
    extract_latents(build_dataset(image_folder, 32, flip=False), FakeAutoencoder(), tmp_path / "one" / "c",
                    progress=False, **kw)
    (tmp_path / "two").mkdir()
    torch.multiprocessing.spawn(
        extraction_worker, args=(2, _free_port(), str(image_folder), str(tmp_path / "two" / "c"), kw),
        nprocs=2, join=True,
    )
    _assert_same_cache(tmp_path / "one" / "c", tmp_path / "two" / "c")
    # Shards k % 2 == rank: rank 0 had shards 0 and 2 (items 0-2, 6-8), rank 1 shards 1 and 3.
    calls = [int((tmp_path / "two" / f"calls-{r}").read_text()) for r in (0, 1)]
    assert calls == [2 * 6, 2 * 4]
    assert LatentCache.open(tmp_path / "two" / "c", verify=True).index.shard_rows == (3, 3, 3, 1)


def test_cli_round_trip_and_refusals(tmp_path, image_folder, tiny_vae_dir, capsys):
    from ditlab.autoencoders import load_autoencoder

    args = ["extract-latents", str(image_folder), "--autoencoder", str(tiny_vae_dir), "--image-size", "32",
            "--out", str(tmp_path / "c"), "--workers", "0", "--batch-size", "4", "--shard-size", "6",
            "--dtype", "float32"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "wrote 10 latents x 2 flips [4, 8, 8] float32" in err and "img/s" in err  # the progress bar
    ae = load_autoencoder(tiny_vae_dir)
    cache = LatentCache.open(tmp_path / "c")
    ds = build_dataset(image_folder, 32, flip=False)
    images = torch.stack([ds[i][0] for i in (0, 9)])  # (2, 3, 32, 32)
    torch.testing.assert_close(torch.stack([cache.get(0, False), cache.get(9, False)]), ae.encode(images),
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cache.get(9, True), ae.encode(images.flip(-1))[1], rtol=1e-5, atol=1e-6)
    assert cache.index.autoencoder_source == str(tiny_vae_dir)
    # Bad input: one line, exit code 2.
    for bad, what in [
        (["--image-size", "30"], "not a multiple of the autoencoder's downsampling factor 4"),
        (["--image-size", "64"], "other settings (image_size: 32 != 64)"),
        (["--batch-size", "0"], "--batch-size must be a positive integer"),
        (["--max-bad-fraction", "2"], "--max-bad-fraction must lie in [0, 1]"),
    ]:
        assert main(args + bad) == 2
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert line.startswith("error: ") and what in line, line
    missing = ["extract-latents", str(tmp_path / "nope"), "--autoencoder", str(tiny_vae_dir),
               "--out", str(tmp_path / "d"), "--image-size", "32"]
    assert main(missing) == 2 and "does not exist" in capsys.readouterr().err
    assert len(LatentCache.open(tmp_path / "c")) == 10  # still whole after all of that


@pytest.mark.slow  # two torchrun ranks and one SIGKILLed process, each importing diffusers
def test_torchrun_cli_and_kill_resume(tmp_path, image_folder, tiny_vae_dir):
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    common = [str(image_folder), "--autoencoder", str(tiny_vae_dir), "--image-size", "32", "--workers", "0",
              "--batch-size", "2", "--shard-size", "2", "--sample-posterior", "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = [torchrun, "--nproc_per_node", "2", "--master_port", str(_free_port()), "-m", "ditlab.cli"]
    done = subprocess.run(run + ["extract-latents", *common, "--out", str(tmp_path / "two")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    # One rank, SIGKILLed by itself right after its first shard is on disk (deterministic, however fast
    # the machine), then rerun to completion.
    cmd = [sys.executable, "-m", "ditlab.cli", "extract-latents", *common, "--out", str(tmp_path / "one")]
    proc = subprocess.run([sys.executable, "-c", _KILLED_AFTER_FIRST_SHARD, *cmd[3:]], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    one = tmp_path / "one"
    assert (one / "shard-00000.json").exists() and not (one / "index.json").exists()  # killed mid-way
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    encodes = int(done.stderr.split("rank 0 encodes ")[1].split()[0])
    assert 0 < encodes < 5  # only the shards the killed run had not finished
    _assert_same_cache(tmp_path / "one", tmp_path / "two")
