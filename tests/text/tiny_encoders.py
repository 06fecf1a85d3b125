"""Tiny random text encoders saved as Hugging Face folders, built offline for the tests.

Each folder holds a random model (2 layers, width 32) and a word-level tokenizer over a small
vocabulary, with the special tokens of its family (T5: ``... </s>``; CLIP: ``<|startoftext|> ...
<|endoftext|>``; BERT: ``[CLS] ... [SEP]``).
"""
from __future__ import annotations

from pathlib import Path

import torch

WORDS = [
    "a", "an", "the", "thin", "thick", "bold", "fine", "medium", "regular", "seven", "three", "eight", "7", "3", "8",
    "leaning", "slanted", "tilted", "left", "right", "upright", "straight", "handwritten", "digit", "number", "that",
    "is", "and",
]


def _tokenizer(specials: list[str], template: str, pad: str, **named):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(specials)}
    for w in WORDS:
        vocab[w] = len(vocab)
    unk = named.get("unk_token", specials[0])
    tk = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    used = [t for t in specials if t in template]
    tk.post_processor = processors.TemplateProcessing(single=template, special_tokens=[(t, vocab[t]) for t in used])
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token=pad, **named), vocab


def _small(cfg_cls, **kw):
    torch.manual_seed(0)
    return cfg_cls(**kw)


def make_t5(folder: Path, kind: str = "t5") -> Path:
    """A T5 (or UMT5) encoder folder; the decoder is left out, as in PixArt's text_encoder folders."""
    import transformers

    tok, vocab = _tokenizer(["<pad>", "</s>", "<unk>"], "$A </s>", "<pad>", eos_token="</s>", unk_token="<unk>")
    cfg_cls = transformers.UMT5Config if kind == "umt5" else transformers.T5Config
    cfg = _small(cfg_cls, vocab_size=len(vocab), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                 relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1)
    model_cls = transformers.UMT5EncoderModel if kind == "umt5" else transformers.T5EncoderModel
    model_cls(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def make_clip(folder: Path, projection: bool = True, full: bool = False) -> Path:
    """A CLIP text model (with or without text_projection), or a whole CLIPModel when ``full``."""
    import transformers

    tok, vocab = _tokenizer(["<|endoftext|>", "<|startoftext|>"], "<|startoftext|> $A <|endoftext|>",
                            "<|endoftext|>", bos_token="<|startoftext|>", eos_token="<|endoftext|>")
    text = dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=16, projection_dim=24,
                bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"], pad_token_id=0)
    torch.manual_seed(0)
    if full:
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                      image_size=8, patch_size=4)
        model = transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=vision,
                                                               projection_dim=24))
    else:
        cfg = transformers.CLIPTextConfig(**text)
        model = (transformers.CLIPTextModelWithProjection if projection else transformers.CLIPTextModel)(cfg)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def make_bert(folder: Path, sentence_transformers: str | None = None) -> Path:
    """A BERT folder; ``sentence_transformers="mean"`` or ``"cls"`` adds modules.json with that pooling + Normalize."""
    import json

    import transformers

    tok, vocab = _tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]"], "[CLS] $A [SEP]", "[PAD]", unk_token="[UNK]",
                            cls_token="[CLS]", sep_token="[SEP]")
    cfg = _small(transformers.BertConfig, vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                 num_attention_heads=4, intermediate_size=64, max_position_embeddings=24)
    transformers.BertModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    if sentence_transformers:
        modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                   {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                   {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]
        (folder / "modules.json").write_text(json.dumps(modules))
        (folder / "1_Pooling").mkdir()
        mode = sentence_transformers
        (folder / "1_Pooling" / "config.json").write_text(json.dumps(
            {"word_embedding_dimension": 32, "pooling_mode_cls_token": mode == "cls",
             "pooling_mode_mean_tokens": mode == "mean"}))
    return folder
