"""The other designs go through the same training run, checkpoints, resume and Pipeline as DiT."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ditlab.cli import main
from ditlab.diffusion import create_process
from ditlab.models import create_model, load_pretrained, save_pretrained
from ditlab.training.checkpoint import latest_checkpoint, load_weights

TINY = ["--preset", "digits-tiny", "--num_workers", "0", "--ckpt_every", "2", "--global_batch_size", "16"]


@pytest.mark.parametrize("design", [["--model", "U-ViT-Test/2"], ["--block", "adaLN-Zero-in-context"],
                                    ["--block", "u-vit", "--pos_embed", "rope", "--process", "flow",
                                     "--shift_base", "4", "--sampler", "euler"]],
                         ids=["u-vit", "adaLN-Zero-in-context", "u-vit-rope-flow"])
def test_trains_resumes_exactly_and_samples(design, tmp_path, capsys):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(["train", *TINY, *design, "--run_dir", str(straight), "--steps", "4"]) == 0
    assert main(["train", *TINY, *design, "--run_dir", str(split), "--steps", "2"]) == 0
    assert main(["train", *TINY, *design, "--run_dir", str(split), "--steps", "4"]) == 0
    a, b = (load_weights(latest_checkpoint(r) / "model.safetensors") for r in (straight, split))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    out = tmp_path / "s.npz"
    assert main(["sample", str(straight), "--class", "3", "--num", "2", "--steps", "3", "--out",
                 str(tmp_path / "g.png"), "--out-npz", str(out), "--width", "12"]) == 0
    assert np.load(out)["arr_0"].shape == (2, 8, 12, 1)


def test_mmdit_trains_on_text_tensors_and_round_trips(tmp_path):
    """The training step of a text model at the network level (random text tensors; TextCondition is issue 12's)."""
    torch.manual_seed(0)
    model = create_model("MMDiT-Test/2", input_size=8, context_dim=12, pooled_dim=6, timestep_scale=1000.0)
    process = create_process("flow", shift_base=4)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x0 = torch.randn(8, 4, 8, 8)
    cond = {"context": torch.randn(8, 5, 12), "context_mask": torch.rand(8, 5) > 0.3, "pooled": torch.randn(8, 6)}
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = process.training_loss(model, x0, cond).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    save_pretrained(model, tmp_path / "m")
    back = load_pretrained(tmp_path / "m")
    t = torch.rand(8)
    torch.testing.assert_close(back(x0, t, **cond), model.eval()(x0, t, **cond), rtol=0, atol=0)
