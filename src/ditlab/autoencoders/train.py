"""Training a :class:`KLAutoencoder` on any ditlab dataset, and measuring its scaling factor.

Loss (Kingma & Welling 2014 with a weighted KL, as in latent diffusion):
``L1(x, x_hat) + MSE(x, x_hat) + kl_weight * KL(q(z|x) || N(0, I))``, each a mean over elements.
The KL weight is kept small so reconstructions stay sharp; the latents are then rescaled by
``1 / std`` measured on the data, so the diffusion model sees roughly unit-variance inputs.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ditlab.autoencoders.kl import KLAutoencoder, KLAutoencoderConfig
from ditlab.data.folder import collate_skip_bad
from ditlab.errors import ConfigError, DataError
from ditlab.models.cuda_graph import GraphedStep


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Mean over elements of KL(N(mean, exp(logvar)) || N(0, 1)) = 0.5 (mu^2 + s^2 - 1 - log s^2)."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()


class _Batches:
    """Endless shuffled batches of float images in [-1, 1], from memory when the dataset allows."""

    def __init__(self, dataset, batch_size: int, generator: torch.Generator, num_workers: int):
        self.batch_size = batch_size
        self.generator = generator
        self.skipped = 0
        if hasattr(dataset, "tensors"):
            self.images = dataset.tensors()[0]  # (N, C, H, W) uint8
            self.flip = bool(getattr(dataset, "flip", False))
            self.loader = None
        else:
            self.images = None
            self.loader = torch.utils.data.DataLoader(
                dataset, batch_size=batch_size, shuffle=True, drop_last=len(dataset) > batch_size,
                num_workers=num_workers, collate_fn=collate_skip_bad, generator=generator,
                persistent_workers=num_workers > 0,
            )
            self._it = iter(self.loader)

    def next(self) -> torch.Tensor:
        if self.images is not None:
            idx = torch.randint(0, self.images.shape[0], (self.batch_size,), generator=self.generator)
            x = self.images[idx].float().div_(127.5).sub_(1.0)  # (B, C, H, W) in [-1, 1]
            if self.flip:
                mask = torch.rand(self.batch_size, generator=self.generator) < 0.5
                x[mask] = x[mask].flip(-1)
            return x
        while True:
            try:
                batch = next(self._it)
            except StopIteration:
                self._it = iter(self.loader)
                continue
            self.skipped += getattr(batch, "skipped", 0)
            if len(batch[1]) > 0:
                return batch[0]


def _lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% of ``lr``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def _eval_batches(dataset, index: torch.Tensor, batch_size: int):
    """Float image batches (in [-1, 1]) of ``dataset[index]``, unflipped, unreadable files dropped."""
    if hasattr(dataset, "tensors"):
        images = dataset.tensors()[0][index]
        for i in range(0, len(index), batch_size):
            yield images[i : i + batch_size].float().div(127.5).sub(1.0)
        return
    flip = getattr(dataset, "flip", False)
    dataset.flip = False  # measure on the images themselves
    try:
        subset = torch.utils.data.Subset(dataset, index.tolist())
        for batch in torch.utils.data.DataLoader(subset, batch_size=batch_size, collate_fn=collate_skip_bad):
            if len(batch[1]) > 0:
                yield batch[0]
    finally:
        dataset.flip = flip


def _spread_index(n_total: int, n: int) -> torch.Tensor:
    # Spread the measured images over the whole dataset rather than taking its first classes.
    return torch.linspace(0, n_total - 1, min(n_total, n)).round().long().unique()


@torch.no_grad()
def reconstruction_error(model, dataset, *, max_images: int = 1000, batch_size: int = 250) -> float:
    """Mean squared error (pixels in [-1, 1]) of ``decode(encode(x))`` over up to ``max_images`` images."""
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for x in _eval_batches(dataset, _spread_index(len(dataset), max_images), batch_size):
        x = x.to(device)
        total += (model.decode(model.encode(x)) - x).double().pow(2).sum().item()
        count += x.numel()
    return total / max(count, 1)


@torch.no_grad()
def measure_latents(
    model: KLAutoencoder, dataset, *, max_images: int = 4096, batch_size: int = 256
) -> tuple[torch.Tensor, float]:
    """Per-channel mean (c,) and the standard deviation around it of the unscaled posterior means,
    over (up to) ``max_images`` images spread over the dataset."""
    model.eval()
    device = next(model.parameters()).device
    c = model.latent_channels
    total, total_sq, count = torch.zeros(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64), 0
    for x in _eval_batches(dataset, _spread_index(len(dataset), max_images), batch_size):
        mean, _ = model.posterior(x.to(device))  # (B, c, h, w)
        mean = mean.double().cpu().transpose(0, 1).reshape(c, -1)  # (c, B*h*w)
        total += mean.sum(1)
        total_sq += mean.pow(2).sum(1)
        count += mean.shape[1]
    if count == 0:
        raise DataError(
            "no readable images to measure the latent scale on: check the dataset (see the skipped-image warnings)"
        )
    shift = total / count  # (c,)
    var = (total_sq / count - shift.pow(2)).mean().item()  # pooled variance around each channel's mean
    return shift.float(), math.sqrt(max(var, 1e-12))


def measure_latent_std(model: KLAutoencoder, dataset, **kwargs) -> float:
    """Standard deviation of the unscaled latents around their per-channel means."""
    return measure_latents(model, dataset, **kwargs)[1]


def train_autoencoder(
    dataset,
    out_dir: str | os.PathLike,
    *,
    downsample: int = 4,
    latent_channels: int = 4,
    steps: int = 1600,
    batch_size: int = 16,
    lr: float = 3e-3,
    kl_weight: float = 1e-5,
    seed: int = 0,
    progress: bool = True,
    num_workers: int = 0,
    config: KLAutoencoderConfig | None = None,
    device: str | torch.device | None = None,
    cuda_graphs: bool = False,
) -> KLAutoencoder:
    """Train a KL-VAE on ``dataset`` and save it to ``out_dir`` (config.json + model.safetensors).

    Args:
        dataset: a ditlab dataset (items (image (C, H, W) in [-1, 1], label)); built-in ones train
            from memory.
        downsample: spatial factor 1, 2, 4 or 8; latents are (latent_channels, H/d, W/d).
        kl_weight: weight of the per-element KL term; small values keep reconstructions sharp.
        config: an explicit architecture (overrides ``downsample``/``latent_channels``).
        device: where to train (default: a GPU if there is one); the model stays there.
        cuda_graphs: on a GPU, replay each step's forward + backward as one CUDA graph (opt-in: not measured
            on a GPU yet; ``ditlab.models.cuda_graph.GraphedStep``); the CPU runs the same step either way.
    Returns the trained model (eval mode) with ``latent_shift`` = the per-channel mean of its latents
    and ``scaling_factor`` = 1 / their standard deviation around it, both measured on ``dataset``.
    """
    if config is None:
        if downsample not in (1, 2, 4, 8):
            raise ConfigError(f"downsample must be 1, 2, 4 or 8, got {downsample}")
        if latent_channels < 1:
            raise ConfigError(f"latent channels must be at least 1, got {latent_channels}")
        config = KLAutoencoderConfig.default(dataset.channels, latent_channels, downsample)
    if dataset.image_size % config.downsample:
        raise ConfigError(
            f"image size {dataset.image_size} is not divisible by the downsampling factor {config.downsample}: "
            "pick an image size that is a multiple of it"
        )
    if steps < 1 or batch_size < 1 or not lr > 0 or kl_weight < 0:
        raise ConfigError("steps and batch size must be positive, lr > 0 and kl weight >= 0")
    device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = KLAutoencoder(config).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    batches = _Batches(dataset, batch_size, gen, num_workers)
    warmup = min(100, max(1, steps // 20))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc="train-vae", unit="step", dynamic_ncols=True)
    model.train()
    start = time.time()
    ema_rec = None

    def loss_fn(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        recon, mean, logvar = model(x)
        rec = F.l1_loss(recon, x) + F.mse_loss(recon, x)
        return rec + kl_weight * kl_divergence(mean, logvar), rec

    graphed = GraphedStep(loss_fn, model.parameters()) if cuda_graphs else None  # opt-in
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, steps, lr, warmup)
        x = batches.next().to(device, non_blocking=True)  # (B, C, H, W)
        if graphed is not None:  # zero grads, forward, backward: one replay on a GPU
            _, rec = graphed(x=x)
        else:
            loss, rec = loss_fn(x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        rec = rec.detach()
        ema_rec = rec if ema_rec is None else 0.95 * ema_rec + 0.05 * rec  # on the device: no host sync per step
        if bar is not None:
            bar.update(1)
            if step % 10 == 0 or step == steps - 1:  # the progress line reads it every 10 steps
                ips = (step + 1) * batch_size / max(time.time() - start, 1e-9)
                bar.set_postfix(rec=f"{ema_rec.item():.4f}", img_s=f"{ips:.0f}")
    if bar is not None:
        bar.close()
    model.eval()
    shift, std = measure_latents(model, dataset)
    model.latent_shift.copy_(shift.to(model.latent_shift.device))
    model.scaling_factor = 1.0 / std
    model.save(Path(out_dir))
    model.skipped_images = batches.skipped
    return model
