"""The sampling Pipeline: conditions spread over samples, per-sample seeds, the step callback and cancelling,
one-line refusals, and the run directory round trip (``from_run`` == what ``ditlab sample`` writes)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ditlab.autoencoders import load_autoencoder
from ditlab.cli import main
from ditlab.conditioning import ClassCondition, NoCondition
from ditlab.diffusion import create_process
from ditlab.errors import UserError
from ditlab.models import create_model
from ditlab.sampling import CANCEL, GenerationCancelled, Pipeline, spread


def _pipeline(num_classes: int = 3, kind: str = "flow") -> Pipeline:
    model = create_model("DiT-Test/2", input_size=8, in_channels=1, num_classes=num_classes, learn_sigma=False)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # every weight random: a fresh adaLN-Zero model would output zeros
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    condition = ClassCondition(num_classes) if num_classes else NoCondition()
    process = create_process(kind) if kind == "flow" else create_process("ddpm", learn_sigma=False)
    return Pipeline(model.eval(), process, load_autoencoder("pixel", channels=1), condition, (1, 8, 8))


def test_spread_gives_the_first_items_the_remainder():
    assert spread([0, 1, 2], 8) == [0, 0, 0, 1, 1, 1, 2, 2]
    assert spread(["a"], 3) == ["a", "a", "a"]


def test_labels_are_spread_in_order_and_described():
    pipe = _pipeline()
    got = pipe(labels=[2, 0], num=5, steps=3)
    assert got.labels.tolist() == [2, 2, 2, 0, 0] and got.descriptions == ["2", "2", "2", "0", "0"]
    assert got.images.shape == (5, 8, 8, 1) and got.images.dtype == np.uint8
    assert got.settings == {"sampler": "euler", "steps": 3, "cfg_scale": 1.0, "seed": 0, "negative_prompt": None}
    every = pipe(num=6, steps=3)  # no labels: every class, evenly
    assert every.labels.tolist() == [0, 0, 1, 1, 2, 2]


def test_sample_i_depends_only_on_seed_plus_i():
    pipe = _pipeline()
    whole = pipe(labels=[0, 1, 2, 1], seed=5, steps=4, cfg_scale=2.0, batch_size=4).images
    assert len({whole[i].tobytes() for i in range(4)}) == 4
    for batch_size in (1, 3):
        assert np.array_equal(pipe(labels=[0, 1, 2, 1], seed=5, steps=4, cfg_scale=2.0,
                                   batch_size=batch_size).images, whole)
    # sample 2 of seed 5 is sample 0 of seed 7 (noise seed seed + i), with the same label
    assert np.array_equal(pipe(labels=[2], seed=7, steps=4, cfg_scale=2.0).images[0], whole[2])
    assert np.array_equal(pipe(labels=[2], seed=5, indices=[2], steps=4, cfg_scale=2.0).images[0], whole[2])


def test_callback_sees_every_step_with_the_prediction_and_can_cancel():
    pipe = _pipeline()
    seen = []

    def record(step):
        seen.append((step.batch, step.step, step.total, tuple(step.x0.shape)))
        if step.step == step.total:
            assert step.decode().shape == (step.x0.shape[0], 8, 8, 1)

    got = pipe(labels=[0, 1], num=5, steps=4, batch_size=3, callback=record, return_latents=True)
    assert seen == [(0, s, 4, (3, 1, 8, 8)) for s in range(1, 5)] + [(1, s, 4, (2, 1, 8, 8)) for s in range(1, 5)]
    # the prediction after the last Euler step is the final sample
    last = {}
    pipe(labels=[0], num=1, steps=4, callback=lambda s: last.update(x0=s.x0.clone()))
    final = pipe(labels=[0], num=1, steps=4, return_latents=True).latents
    torch.testing.assert_close(last["x0"], final, rtol=1e-5, atol=1e-5)
    assert got.latents.shape == (5, 1, 8, 8)

    calls = []

    def cancel_at_two(step):
        calls.append(step.step)
        return CANCEL if step.step == 2 else None

    with pytest.raises(GenerationCancelled, match="step 2 of 6"):
        pipe(labels=[0], num=2, steps=6, callback=cancel_at_two)
    assert calls == [1, 2]

    def raise_at_one(step):
        raise GenerationCancelled("stop")

    with pytest.raises(GenerationCancelled, match="stop"):
        pipe(labels=[0], num=2, steps=6, callback=raise_at_one)


def test_requests_the_model_cannot_take_are_one_line_errors():
    pipe = _pipeline()
    with pytest.raises(UserError, match="class-conditional: use --class instead of a prompt"):
        pipe(prompts=["a cat"], num=1)
    with pytest.raises(UserError, match="--negative-prompt needs a text model"):
        pipe(labels=[0], cfg_scale=2.0, negative_prompt="blurry")
    with pytest.raises(UserError, match="outside the model's classes"):
        pipe(labels=[3])
    with pytest.raises(UserError, match="does not run the flow process"):
        pipe(labels=[0], sampler="ddpm")
    with pytest.raises(UserError, match="unconditional: drop --class"):
        _pipeline(num_classes=0)(labels=[0])
    unconditional = _pipeline(num_classes=0)(num=3, steps=2, cfg_scale=4.0)  # guidance needs a condition: ignored
    assert unconditional.images.shape == (3, 8, 8, 1) and unconditional.labels is None


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory):
    """A 4-step pixel-space run on a folder with named classes (circles, squares)."""
    root = tmp_path_factory.mktemp("shapes")
    for name, value in (("circles", 40), ("squares", 200)):
        (root / "data" / name).mkdir(parents=True)
        for i in range(8):
            Image.new("L", (8, 8), value + i).save(root / "data" / name / f"{i}.png")
    run = root / "run"
    assert main(["train", "--preset", "digits-tiny", "--data", str(root / "data"), "--run_dir", str(run),
                 "--steps", "4", "--global_batch_size", "8", "--ckpt_every", "4", "--flip", "false"]) == 0
    return run


def test_from_run_samples_what_the_command_writes(shapes_run, tmp_path, capsys):
    pipe = Pipeline.from_run(shapes_run)
    assert pipe.condition.class_names == ["circles", "squares"] and pipe.info["step"] == 4
    assert pipe.describe()["class_names"] == ["circles", "squares"]
    got = pipe(labels=[1, 0], num=4, seed=3)
    assert main(["sample", str(shapes_run), "--class", "squares,circles", "--num", "4", "--seed", "3",
                 "--out", str(tmp_path / "g.png"), "--out-npz", str(tmp_path / "s.npz")]) == 0
    with np.load(tmp_path / "s.npz") as z:
        np.testing.assert_array_equal(z["arr_0"], got.images)
        assert z["labels"].tolist() == [1, 1, 0, 0]
    grid = np.asarray(Image.open(tmp_path / "g.png"))
    assert grid.shape[1] > 2 * (8 + 2) + 2  # a margin for the row labels (squares, circles)
    assert main(["sample", str(shapes_run), "--class", "1", "--num", "4", "--seed", "3",
                 "--out", str(tmp_path / "h.png"), "--out-npz", str(tmp_path / "t.npz")]) == 0
    with np.load(tmp_path / "t.npz") as z:
        np.testing.assert_array_equal(z["arr_0"], pipe(labels=[1], num=4, seed=3).images)
    assert main(["sample", str(shapes_run), "--prompt", "a circle", "--out", str(tmp_path / "x.png")]) == 2
    assert "class-conditional: use --class instead of a prompt" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("kind", ["flow", "ddpm"])
def test_cuda_graphs_sample_the_same_on_cpu_through_the_graphed_forward(kind, monkeypatch):
    """Opt-in (off by default); on the CPU the GraphedForward calls the model eagerly: the same samples."""
    from ditlab.models import cuda_graph

    pipe = _pipeline(kind=kind)
    assert pipe.cuda_graphs is False
    want = pipe(labels=[0, 2], num=5, steps=4, cfg_scale=2.0, batch_size=3, seed=1)
    calls = []
    original = cuda_graph.GraphedForward.__call__
    counting = lambda self, **kw: calls.append(1) or original(self, **kw)  # noqa: E731
    monkeypatch.setattr(cuda_graph.GraphedForward, "__call__", counting)
    pipe.cuda_graphs = True
    got = pipe(labels=[0, 2], num=5, steps=4, cfg_scale=2.0, batch_size=3, seed=1)
    assert np.array_equal(got.images, want.images)
    assert len(calls) == 2 * 4  # two batches of four (guided) network evaluations
    model, graphed = pipe._graphed
    assert model is pipe.model and graphed.replays == 0
    pipe(labels=[1], num=1, steps=2)
    assert pipe._graphed[1] is graphed  # kept across calls
