"""The opt-in GPU speed switches of `ditlab train` on the CPU: the same run, bit for bit.

``--cuda_graphs`` (the step through GraphedStep, sampling through GraphedForward: eager on the CPU),
``--fused_kernels`` (ditlab.models.fused: the eager expressions on the CPU) and ``--grad_checkpointing N``
(recomputation) change how the numbers are computed, never which; all are resumable.
"""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from ditlab.cli import main
from ditlab.models import fused
from ditlab.training.checkpoint import latest_checkpoint, load_weights

TINY = ["train", "--preset", "digits-tiny", "--device", "cpu", "--num_workers", "0", "--steps", "6",
        "--ckpt_every", "3"]  # the CPU: bit for bit (a GPU's fused kernels round differently)
SWITCHES = ["--cuda_graphs", "--fused_kernels", "--grad_checkpointing", "1"]


def _weights(run):
    return load_weights(latest_checkpoint(run) / "model.safetensors")


def _same_weights(a, b):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


@pytest.mark.parametrize("process", ["ddpm", "flow"])
def test_switches_train_the_same_weights_and_samples_on_cpu(tmp_path, process):
    common = [*TINY, "--process", process, "--eval_num", "20", "--eval_batch_size", "8"]
    assert main([*common, "--run_dir", str(tmp_path / "plain")]) == 0
    assert main([*common, "--run_dir", str(tmp_path / "switched"), *SWITCHES]) == 0
    assert not fused.is_enabled()  # the run's setting ends with the run
    config = json.loads((tmp_path / "switched" / "config.json").read_text())
    assert (config["cuda_graphs"], config["fused_kernels"], config["grad_checkpointing"]) == (True, True, 1)
    _same_weights(tmp_path / "plain", tmp_path / "switched")
    grids = [np.asarray(Image.open(tmp_path / run / "samples" / "final_grid.png")) for run in ("plain", "switched")]
    assert np.array_equal(*grids)  # the end-of-run evaluation sampled the same images


def test_switches_may_change_on_resume_and_old_boolean_configs_resume(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main([*TINY, "--run_dir", str(straight)]) == 0
    assert main([*TINY, "--run_dir", str(split), "--steps", "3", "--grad_checkpointing"]) == 0
    # a run written before grad_checkpointing counted blocks stored a boolean
    path = split / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "grad_checkpointing": True}))
    assert main([*TINY, "--run_dir", str(split), *SWITCHES]) == 0
    _same_weights(straight, split)
    assert json.loads(path.read_text())["grad_checkpointing"] == 1


def test_cuda_graphs_apply_to_one_process_without_loss_scaling():
    from types import SimpleNamespace

    from ditlab.config import resolve_config
    from ditlab.training.loop import graphed_step_applies

    one, two = SimpleNamespace(enabled=False), SimpleNamespace(enabled=True)
    on = resolve_config("digits-tiny", overrides={"cuda_graphs": True})
    assert graphed_step_applies(on, one)
    assert not graphed_step_applies(on, two)  # DDP / FSDP
    assert not graphed_step_applies(resolve_config("digits-tiny", overrides={"cuda_graphs": True,
                                                                             "autocast": "fp16"}), one)
    assert not graphed_step_applies(resolve_config("digits-tiny"), one)  # off by default


@pytest.mark.slow
def test_compile_blocks_trains_what_the_eager_model_trains(tmp_path):
    """--compile_blocks (inductor on the CPU): the same parameter names, weights equal to rounding."""
    import torch._dynamo

    torch._dynamo.reset()
    assert main([*TINY, "--steps", "4", "--run_dir", str(tmp_path / "plain")]) == 0
    assert main([*TINY, "--steps", "4", "--run_dir", str(tmp_path / "blocks"), "--compile_blocks"]) == 0
    a, b = _weights(tmp_path / "plain"), _weights(tmp_path / "blocks")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)
