"""The text condition: caption ids as records, one caption drawn per row, the null prompt, dropout, prompts,
persistence next to a run or a latent cache."""
from __future__ import annotations

import warnings

import pytest
import torch

from ditlab.conditioning import condition_for_dataset, condition_from_dict
from ditlab.conditioning.text import TextCondition
from ditlab.diffusion import create_process
from ditlab.errors import ConfigError
from ditlab.training.distributed import draw_step

CAPTIONS = ["a thick 7", "a bold 7 leaning left", "a thin 1", "an upright 3"]


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    root = tmp_path_factory.mktemp("features")
    return TextCondition.build(CAPTIONS, "minilm", root=root, max_length=12, standardize=True)


def test_records_pad_with_minus_one_and_every_caption_is_in_the_table(text):
    metas = [{"caption": ["a thick 7", "a bold 7 leaning left"]}, {"caption": ["a thin 1"]}, {"caption": []}, {}]
    ids = text.records(metas)["caption_ids"]
    table = text.table
    assert ids.shape == (4, 2) and ids.dtype == torch.long
    assert ids[0].tolist() == table.ids(["a thick 7", "a bold 7 leaning left"]).tolist()
    assert ids[1, 1] == -1 and ids[2].tolist() == [0, -1] and ids[3].tolist() == [0, -1]  # row 0: ""
    assert table.captions[0] == ""


def test_batch_picks_one_caption_per_row_uniformly(text):
    """choice in [0, 1) picks caption floor(choice * k) of the k an item has; -1 padding is never picked."""
    ids = text.records([{"caption": ["a thick 7", "a bold 7 leaning left", "an upright 3"]},
                        {"caption": ["a thin 1"]}])["caption_ids"]
    picked = text.pick({"caption_ids": ids}, torch.tensor([0.0, 0.99]))
    assert picked.tolist() == [ids[0, 0].item(), ids[1, 0].item()]
    assert text.pick({"caption_ids": ids}, torch.tensor([0.99, 0.5]))[0] == ids[0, 2]
    many = ids[:1].expand(30_000, -1)
    choice = torch.rand(30_000, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(text.pick({"caption_ids": many}, choice), minlength=len(text.table))[ids[0]]
    assert ((counts.float() / 30_000 - 1 / 3).abs() < 0.01).all()  # sd of each rate 0.0027
    cond = text.batch({"caption_ids": ids}, torch.tensor([0.5, 0.5]))
    expected = text.standardized(text.table.lookup([ids[0, 1].item(), ids[1, 0].item()]))
    for key in text.keys:
        torch.testing.assert_close(cond[key], expected[key])
    assert cond["context"].shape == (2, 12, 384) and cond["context_mask"].dtype == torch.bool


def test_null_is_the_empty_prompt_and_dropout_uses_it_at_rate_p(text):
    null = text.null(3)
    empty = text.standardized(text.encoder.encode([""]))
    torch.testing.assert_close(null["pooled"], empty["pooled"].expand(3, -1), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(null["context"], empty["context"].expand(3, -1, -1), atol=2e-3, rtol=2e-3)  # float16
    ids = text.records([{"caption": ["a thick 7"]}] * 20_000)["caption_ids"]
    draws = draw_step(create_process("flow"), 0, 5, 20_000, (1,), torch.device("cpu"), drop_prob=0.1)
    cond = text.drop(text.batch({"caption_ids": ids}, draws.choice), draws.drop)
    is_null = (cond["pooled"] == null["pooled"][:1]).all(dim=1)
    assert torch.equal(is_null, draws.drop)
    assert abs(is_null.float().mean().item() - 0.1) < 0.008  # sd of the rate 0.0021


def test_features_are_standardised_by_the_statistics_of_the_dataset_captions(text):
    """Over the dataset's captions each dimension has mean 0 and std 1 (real tokens; padding stays 0)."""
    ids = text.table.ids(CAPTIONS)
    cond = text.batch({"caption_ids": ids[:, None]})
    tokens = cond["context"][cond["context_mask"]]  # (tokens, D)
    wide = tokens.std(0, unbiased=False) > 0.5  # dims that vary at all over 4 captions
    torch.testing.assert_close(tokens.mean(0), torch.zeros(384), atol=1e-4, rtol=0)
    torch.testing.assert_close(tokens.std(0, unbiased=False)[wide], torch.ones(int(wide.sum())), atol=1e-3, rtol=0)
    torch.testing.assert_close(cond["pooled"].mean(0), torch.zeros(384), atol=1e-4, rtol=0)
    assert not cond["context"][~cond["context_mask"]].any()
    raw = TextCondition(text.table, "minilm", 12)  # no statistics: the encoder's features as they are
    torch.testing.assert_close(raw.batch({"caption_ids": ids[:, None]})["pooled"], text.table.lookup(ids)["pooled"])
    assert raw.to_dict()["stats"] is None and text.to_dict()["stats"] == "text_stats.safetensors"


def test_learned_null_has_no_tokens(text):
    learned = TextCondition(text.table, "minilm", 12, null="learned", stats=text.stats)
    null = learned.null(2)
    assert not null["context_mask"].any() and not null["pooled"].any() and not null["context"].any()
    assert learned.model_fields()["learned_null"] is True and "learned_null" not in text.model_fields()
    with pytest.raises(ConfigError, match="unknown text null"):
        TextCondition(text.table, "minilm", 12, null="zeros")


def test_prompts_use_the_table_or_encode_once_and_empty_is_null(text):
    cond = text.prompts(["a thin 1", "a heavy 9 tilted right", "", "a heavy 9 tilted right"])
    torch.testing.assert_close(cond["pooled"][0], text.batch(text.records([{"caption": ["a thin 1"]}]))["pooled"][0])
    torch.testing.assert_close(cond["pooled"][2], text.null(1)["pooled"][0])
    torch.testing.assert_close(cond["pooled"][1], cond["pooled"][3])
    direct = text.standardized(text.encoder.encode(["a heavy 9 tilted right"]))
    torch.testing.assert_close(cond["pooled"][1], direct["pooled"][0])
    torch.testing.assert_close(cond["context"][1], direct["context"][0], atol=3e-2, rtol=2e-3)  # stored as float16
    assert list(text._cache) == ["a heavy 9 tilted right"]  # encoded once, kept
    assert text.describe(cond) == ["a thin 1", "a heavy 9 tilted right", "(null)", "a heavy 9 tilted right"]
    assert text.prompts([])["context"].shape == (0, 12, 384)


def test_long_prompt_is_truncated_with_one_warning(text):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cond = text.prompts(["a thick seven " * 20])
    assert len(caught) == 1 and "truncated" in str(caught[0].message)
    assert cond["context_mask"].all()  # every one of the 12 positions is a real token


def test_example_prompts_and_model_fields(text):
    assert len(text.example_prompts(3)) == 3 and all(p in CAPTIONS for p in text.example_prompts(3))
    with_examples = TextCondition(text.table, "minilm", 12, examples=["a 5"])
    assert with_examples.example_prompts(2) == ["a 5", "a 5"]
    assert text.model_fields() == {"num_classes": 0, "context_dim": 384, "pooled_dim": 384}


def test_save_and_reload_next_to_a_run(text, tmp_path):
    text.save(tmp_path / "condition")
    d = text.to_dict()
    assert d["kind"] == "text" and d["encoder"] == "minilm" and d["max_length"] == 12
    back = condition_from_dict(d, root=tmp_path / "condition")
    assert isinstance(back, TextCondition) and back.table.captions == text.table.captions
    ids = text.records([{"caption": ["a bold 7 leaning left"]}])
    torch.testing.assert_close(back.batch(ids)["context"], text.batch(ids)["context"])
    assert (tmp_path / "condition" / "text_stats.safetensors").is_file()
    assert condition_from_dict(d, root=tmp_path / "condition", text_null="learned").null_kind == "learned"
    (tmp_path / "condition" / d["table"]).unlink()
    with pytest.raises(Exception, match="caption features .* are missing"):
        condition_from_dict(d, root=tmp_path / "condition")


def test_condition_for_captioned_data(tmp_path):
    class Captioned:
        captioned, num_classes = True, 0

        def metas(self):
            return [{"caption": ["a thin 1", "a 1"]}, {"caption": ["an upright 3"]}]

    c = condition_for_dataset(Captioned(), "auto", root=tmp_path, text_max_length=8)
    assert isinstance(c, TextCondition) and "a 1" in c.table and c.max_length == 8
    with pytest.raises(ConfigError, match="--condition text needs a captioned dataset"):
        condition_for_dataset(type("Plain", (), {"num_classes": 3})(), "text", root=tmp_path)
    assert condition_for_dataset(Captioned(), "none").kind == "none"
