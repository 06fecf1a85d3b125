"""``--class_factors`` end to end: a run trains with factored labels, resumes, and samples every class."""
from __future__ import annotations

import json

import numpy as np
import torch

from ditlab.cli import main
from ditlab.sampling import Pipeline


def test_factored_labels_train_and_sample(tmp_path):
    run = tmp_path / "run"
    args = ["train", "--preset", "digits-tiny", "--run_dir", str(run), "--class_factors", "2,5", "--steps", "4",
            "--ckpt_every", "2", "--global_batch_size", "16"]
    assert main(args) == 0
    meta = json.loads(sorted((run / "checkpoints").glob("step_*"))[-1].joinpath("meta.json").read_text())
    assert meta["model"]["class_factors"] == [2, 5]
    pipe = Pipeline.from_run(run)
    assert pipe.model.y_embedder.factors == (2, 5)
    got = pipe(labels=list(range(10)), num=10, seed=0, steps=2)
    assert got.images.shape[0] == 10 and list(got.labels) == list(range(10))
    assert np.isfinite(got.images.astype(np.float32)).all()
    # the digit row 1 (labels 5-9) and the unit row 3 (labels 3 and 8) are shared: label 8 reads both
    emb = pipe.model.y_embedder
    rows = emb.factor_tables[0].weight[1] + emb.factor_tables[1].weight[3]
    torch.testing.assert_close(emb(torch.tensor([8]))[0], rows)
