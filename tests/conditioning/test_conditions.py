"""Conditions as data: records, batches, the null condition, dropout (the one place it happens), parsing."""
from __future__ import annotations

import pytest
import torch

from ditlab.conditioning import (
    ClassCondition,
    Condition,
    NoCondition,
    cat_conds,
    condition_for_dataset,
    condition_from_dict,
    index_records,
)
from ditlab.data import build_dataset
from ditlab.errors import ConfigError, UserError
from ditlab.training.distributed import draw_step


def test_class_records_batch_null_and_describe():
    c = ClassCondition(3, ["cat", "dog", "owl"])
    records = c.records([{"label": 2}, {"label": 0, "extra": "ignored"}, {"label": 1}])
    assert records["y"].tolist() == [2, 0, 1] and records["y"].dtype == torch.long
    batch = c.batch(index_records(records, torch.tensor([2, 0])))
    assert batch["y"].tolist() == [1, 2]
    assert c.null(4)["y"].tolist() == [3, 3, 3, 3]  # the extra row of the label table
    assert c.describe({"y": torch.tensor([0, 2, 3])}) == ["cat", "owl", "(null)"]
    assert c.model_fields() == {"num_classes": 3}
    assert condition_from_dict(c.to_dict()).to_dict() == c.to_dict()


def test_class_names_parse_like_numbers():
    c = ClassCondition(3, ["circles", "squares", "stars"])
    assert c.parse("all") == [0, 1, 2]
    assert c.parse("squares,circles") == [1, 0]
    assert c.parse("2, 0") == [2, 0]
    assert c.parse("stars,1") == [2, 1]
    with pytest.raises(UserError, match="'hexagons' is neither a class number nor a class name"):
        c.parse("hexagons")
    with pytest.raises(UserError, match=r"--class 3 is outside the model's classes 0..2"):
        c.parse("3")
    with pytest.raises(UserError, match="outside the model's classes"):
        c.labels([0, -1])
    assert ClassCondition(2).class_names == ["0", "1"]  # unnamed classes are their numbers


def test_drop_replaces_exactly_the_masked_rows_by_the_null_condition():
    c = ClassCondition(10)
    cond = {"y": torch.arange(6)}
    mask = torch.tensor([True, False, True, False, False, True])
    assert c.drop(cond, mask)["y"].tolist() == [10, 1, 10, 3, 4, 10]
    assert c.drop(cond, None) is cond
    assert NoCondition().drop({}, mask) == {}


class _TokenCondition(Condition):
    """A stand-in with text-shaped tensors, to check the generic drop on (N, L, D) and (N, L) tensors."""

    kind, keys = "text", ("context", "context_mask", "pooled")

    def records(self, metas):
        return {}

    def batch(self, records, choice=None):
        return {}

    def null(self, n, device="cpu"):
        return {"context": torch.full((n, 3, 2), -1.0), "context_mask": torch.tensor([[True, False, False]] * n),
                "pooled": torch.zeros(n, 2)}

    def describe(self, cond):
        return []

    def model_fields(self):
        return {}

    def to_dict(self):
        return {"kind": "text"}


def test_generic_drop_handles_token_tensors():
    c = _TokenCondition()
    cond = {"context": torch.ones(2, 3, 2), "context_mask": torch.ones(2, 3, dtype=torch.bool),
            "pooled": torch.ones(2, 2)}
    out = c.drop(cond, torch.tensor([False, True]))
    assert torch.equal(out["context"][0], torch.ones(3, 2)) and torch.equal(out["context"][1], -torch.ones(3, 2))
    assert out["context_mask"].tolist() == [[True, True, True], [True, False, False]]
    assert out["context_mask"].dtype == torch.bool
    assert out["pooled"].tolist() == [[1.0, 1.0], [0.0, 0.0]]


def test_dropout_rate_from_the_step_draws():
    """The loop drops the condition with the mask of draw_step: rate p, the same mask on every rank."""
    from ditlab.diffusion import create_process

    draws = draw_step(create_process("flow"), 0, 3, 20_000, (1,), torch.device("cpu"), drop_prob=0.1)
    dropped = ClassCondition(10).drop({"y": torch.zeros(20_000, dtype=torch.long)}, draws.drop)["y"] == 10
    assert abs(dropped.float().mean().item() - 0.1) < 0.008  # sd of the rate 0.0021


def test_condition_for_datasets(tmp_path):
    from PIL import Image

    digits = build_dataset("digits", 8)
    c = condition_for_dataset(digits)
    assert isinstance(c, ClassCondition) and c.class_names == [str(i) for i in range(10)]
    assert isinstance(condition_for_dataset(digits, "none"), NoCondition)
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(2):
        Image.new("RGB", (8, 8), (i * 50, 0, 0)).save(flat / f"{i}.png")
    assert isinstance(condition_for_dataset(build_dataset(flat, 8)), NoCondition)
    with pytest.raises(ConfigError, match="--condition class needs a dataset with classes"):
        condition_for_dataset(build_dataset(flat, 8), "class")
    with pytest.raises(ConfigError, match="unknown condition"):
        condition_for_dataset(digits, "colour")


def test_cat_conds():
    both = cat_conds([{"y": torch.tensor([1, 2])}, {"y": torch.tensor([10, 10])}])
    assert both["y"].tolist() == [1, 2, 10, 10]
    assert cat_conds([]) == {}
