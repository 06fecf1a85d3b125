"""Building blocks of DiT (Peebles & Xie, 2023, §3.2): positions, embedders, attention, MLP.

Everything here is written from the paper and the ViT/MAE conventions it cites; parameter names
follow the paper's reference layout (``x_embedder``, ``t_embedder.mlp``, ``attn.qkv``) so official
checkpoints map onto these modules one key to one key.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ditlab.models import fused


# ----------------------------------------------------------------------------- positions
def sincos_1d(dim: int, pos: Tensor) -> Tensor:
    """Transformer sin-cos embedding of positions ``pos`` (M,) -> (M, dim): [sin | cos] halves.

    omega_i = 10000^(-i / (dim/2)), i = 0 .. dim/2-1 (Vaswani et al., 2017, §3.5).
    """
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even dim, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega  # (dim/2,)
    out = pos.to(torch.float64)[:, None] * omega[None, :]  # (M, dim/2)
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)  # (M, dim)


def sincos_2d(dim: int, grid_h: int, grid_w: int) -> Tensor:
    """Fixed 2-D sin-cos positions for a grid_h x grid_w token grid -> (grid_h*grid_w, dim) float32.

    Tokens are in row-major order (the order of ``conv(x).flatten(2)``). As in MAE/DiT, the first
    dim/2 channels embed the column (w) index and the last dim/2 the row (h) index.
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs dim divisible by 4, got {dim}")
    rows = torch.arange(grid_h).repeat_interleave(grid_w)  # (T,) row index of each token
    cols = torch.arange(grid_w).repeat(grid_h)  # (T,) column index
    emb = torch.cat([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], dim=1)  # (T, dim)
    return emb.float()


# ----------------------------------------------------------------------------- embedders
def timestep_embedding(
    t: Tensor, dim: int, max_period: float = 10000.0, freq_shift: float = 0.0
) -> Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps t (N,) -> (N, dim): [cos | sin].

    Frequencies exp(-ln(max_period) * i / (dim/2 - freq_shift)), i < dim/2. ``freq_shift=0`` is
    ADM / the DiT paper's embedder; diffusers' ``DiTTransformer2DModel`` uses ``freq_shift=1``.
    """
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period)
        * torch.arange(half, dtype=torch.float32, device=t.device)
        / (half - freq_shift)
    )  # (half,)
    args = t.float()[:, None] * freqs[None]  # (N, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (N, 2*half)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    """t (N,) -> 256-d sinusoid -> Linear, SiLU, Linear -> (N, hidden_size)."""

    def __init__(
        self,
        hidden_size: int,
        frequency_embedding_size: int = 256,
        scale: float = 1.0,
        freq_shift: float = 0.0,
    ):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.freq_shift = float(freq_shift)
        # Flow matching feeds t in [0, 1]; scaling it (e.g. by 1000) gives the sinusoid the same
        # resolution it has for DDPM step indices.
        self.scale = float(scale)
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )

    def forward(self, t: Tensor) -> Tensor:
        t_freq = timestep_embedding(
            t * self.scale, self.frequency_embedding_size, freq_shift=self.freq_shift
        )  # (N, 256)
        return self.mlp(t_freq.to(self.mlp[0].weight.dtype))  # (N, D)


class LabelEmbedder(nn.Module):
    """Class labels (N,) -> (N, hidden_size), with a null row (index num_classes) for guidance.

    No dropout here: which labels are replaced by the null one during training is decided by the
    condition (``ditlab.conditioning.Condition.drop``), once for the global batch.

    With ``factors`` (k_1, ..., k_m) whose product is ``num_classes`` a label is read as mixed-radix digits
    (the last factor varies fastest: moving digits' label digit x 8 + direction is (10, 8)) and embedded as the
    sum of one table per factor, each with its own null row. Each factor's rows then learn from every label that
    shares them (a digit's row from all 8 directions) instead of one row per combination.
    """

    def __init__(self, num_classes: int, hidden_size: int, factors: tuple[int, ...] = ()):
        super().__init__()
        self.num_classes = num_classes
        self.factors = tuple(factors)
        if self.factors:
            self.factor_tables = nn.ModuleList(nn.Embedding(k + 1, hidden_size) for k in self.factors)
        else:
            self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)

    def tables(self) -> list[nn.Embedding]:
        return list(self.factor_tables) if self.factors else [self.embedding_table]

    def forward(self, y: Tensor) -> Tensor:
        if not self.factors:
            return self.embedding_table(y)  # (N, D)
        null = y == self.num_classes
        rest = y.clamp(max=self.num_classes - 1)
        out = None
        for k, table in zip(reversed(self.factors), reversed(self.factor_tables), strict=True):
            part = table(torch.where(null, k, rest % k))  # (N, D); the null label reads every null row
            out = part if out is None else out + part
            rest = rest // k
        return out


class ConditionMlp(nn.Module):
    """Linear -> activation -> Linear: projects text features into the model width.

    Used for token features (``context``, GELU-tanh, as PixArt's caption projection) and for the pooled
    prompt vector (SiLU, as SD3's pooled projection, added to the time embedding).
    """

    def __init__(self, in_dim: int, hidden_size: int, act: str = "gelu"):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, hidden_size)
        self.act = nn.GELU(approximate="tanh") if act == "gelu" else nn.SiLU()
        self.linear_2 = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear_2(self.act(self.linear_1(x.to(self.linear_1.weight.dtype))))


def with_null_token(text: Tensor, mask: Tensor | None, null_token: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """PixArt's learned null condition (its ``y_embedding``) for any design: a row whose mask has no real token
    (the null condition of ``TextCondition(null="learned")``) reads ``null_token`` (1, D) as its first token,
    which becomes valid. ``text`` (N, L, D) embedded tokens, ``mask`` (N, L) bool; unchanged without a mask
    or a token."""
    if null_token is None or mask is None:
        return text, mask
    mask = mask.bool()
    empty = ~mask.any(dim=1)  # (N,)
    first = torch.where(empty[:, None], null_token.to(text.dtype).expand(text.shape[0], -1), text[:, 0])  # (N, D)
    text = torch.cat([first[:, None], text[:, 1:]], dim=1)  # (N, L, D)
    mask = torch.cat([(mask[:, 0] | empty)[:, None], mask[:, 1:]], dim=1)  # (N, L)
    return text, mask


# ----------------------------------------------------------------------------- attention / MLP
class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned gain (Zhang & Sennrich, 2019); used for qk-norm."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.to(x.dtype) * self.weight


class Attention(nn.Module):
    """Multi-head attention with one fused qkv projection, for self- and cross-attention.

    Self-attention: q, k, v = qkv(x). Cross-attention: q from x through the first third of the same
    fused weight, k and v from ``context`` through the other two thirds, so one module (and one
    parameter layout) serves both. ``context_mask`` (N, L) bool marks valid keys (True): the context's
    tokens, or x's own tokens in self-attention (padding inside an in-context sequence). ``rope`` (cos, sin)
    rotates queries and keys of self-attention (``ditlab.models.positions.apply_rope``).
    """

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = False, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.q_norm = RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def _heads(self, x: Tensor) -> Tensor:
        n, t, _ = x.shape
        return x.view(n, t, self.num_heads, self.head_dim).transpose(1, 2)  # (N, H, T, d)

    def _project(self, x: Tensor, first: int, last: int) -> Tensor:
        """x through row blocks ``first:last`` of the fused qkv projection (0 = q, 1 = k, 2 = v)."""
        w, b = self.qkv.weight, self.qkv.bias
        d = w.shape[1]  # the model width: each of q, k, v is d rows of the fused weight
        return F.linear(x, w[first * d:last * d], None if b is None else b[first * d:last * d])

    def forward(
        self, x: Tensor, context: Tensor | None = None, context_mask: Tensor | None = None,
        rope: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        n, t, d = x.shape
        if context is None:
            if torch.is_grad_enabled() or fused.one_qkv_gemm(x):  # (the latter: opt-in GPU sampling)
                q, k, v = self.qkv(x).chunk(3, dim=-1)  # 3 x (N, T, D): one GEMM, the faster in training
            else:  # sampling: one GEMM per row block of the same weight; same numbers, q/k/v contiguous,
                # ~5% faster for DiT-B/2 at 256 px on CPU (docs/performance.md)
                q, k, v = (self._project(x, i, i + 1) for i in range(3))
        else:
            q = self._project(x, 0, 1)  # (N, T, D)
            k, v = self._project(context, 1, 3).chunk(2, dim=-1)  # (N, L, D)
        # keys that are padding (False) are ignored by every query
        mask = None if context_mask is None else context_mask[:, None, None, :].bool()  # (N, 1, 1, L)
        q, k, v = self._heads(q), self._heads(k), self._heads(v)  # (N, H, T|L, d)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None and context is None:
            q, k = apply_rope(q, rope), apply_rope(k, rope)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (N, H, T, d)
        return self.proj(out.transpose(1, 2).reshape(n, t, d))  # (N, T, D)


def apply_rope(x: Tensor, rope: tuple[Tensor, Tensor]) -> Tensor:
    """Rotate channel pairs (2k, 2k+1) of x (N, H, T, d) by the angles of ``rope`` (cos, sin each (T, d/2)),
    as RoPE does (Su et al. 2021); the 2-D angles come from ``ditlab.models.positions.rope_2d``."""
    cos, sin = (r.to(device=x.device, dtype=x.dtype) for r in rope)
    pairs = x.unflatten(-1, (-1, 2))  # (N, H, T, d/2, 2)
    a, b = pairs[..., 0], pairs[..., 1]  # (N, H, T, d/2)
    return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)  # (N, H, T, d)


class Mlp(nn.Module):
    """fc1 -> tanh-approximated GELU -> fc2 (the ViT MLP used by DiT)."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        # act(fc1(x)); with the fused GPU paths on, bias + GELU in the GEMM's epilogue when sampling
        return self.fc2(fused.linear_gelu(x, self.fc1, self.act))


class PatchEmbed(nn.Module):
    """Patchify (§3.1): a p x p conv with stride p, (N, C, H, W) -> (N, T, D), T = HW / p^2."""

    def __init__(self, patch_size: int, in_channels: int, hidden_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        # contiguous: otherwise the whole residual stream inherits the transposed (N, D, T) layout, and
        # every layer norm and residual add copies or strides through it (~10% of a CPU train step)
        return self.proj(x).flatten(2).transpose(1, 2).contiguous()  # (N, C, H, W) -> (N, T, D)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """Adaptive layer-norm affine: x * (1 + scale) + shift, per sample; x (N, T, D), shift (N, D)."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)
