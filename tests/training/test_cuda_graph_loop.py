"""The trainer on a GPU: the step replayed as a CUDA graph (opt-in) trains the same model as the eager step,
and the fused kernels (opt-in) train a model close to it."""
import pytest
import torch

from ditlab.cli import main
from ditlab.training.checkpoint import latest_checkpoint, load_weights

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
ARGS = ["train", "--preset", "digits-tiny", "--device", "cuda", "--steps", "12", "--ckpt_every", "12",
        "--eval_num", "0"]


def _weights(run):
    return load_weights(latest_checkpoint(run) / "model.safetensors")


@pytest.mark.parametrize("process", ["ddpm", "flow"])
def test_graphed_steps_train_what_eager_steps_train(tmp_path, process):
    args = [*ARGS, "--process", process]
    assert main([*args, "--run_dir", str(tmp_path / "graphs"), "--cuda_graphs"]) == 0
    assert main([*args, "--run_dir", str(tmp_path / "eager")]) == 0
    a, b = _weights(tmp_path / "graphs"), _weights(tmp_path / "eager")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)


def test_fused_kernels_and_graphs_together_train_close_to_eager(tmp_path):
    assert main([*ARGS, "--run_dir", str(tmp_path / "fast"), "--cuda_graphs", "--fused_kernels"]) == 0
    assert main([*ARGS, "--run_dir", str(tmp_path / "eager")]) == 0
    a, b = _weights(tmp_path / "fast"), _weights(tmp_path / "eager")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-3, atol=1e-4, msg=key)
