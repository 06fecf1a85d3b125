"""Named training recipes for ``ditlab train --preset NAME``: each a dict of ``TrainConfig`` fields.

Every value was chosen by measurement; the README, docs/text_to_image.md and docs/video.md say which and why.
"""
from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    # The demo: a class-conditional latent DiT on built-in MNIST, minutes on a laptop CPU.
    # Chosen by measurement: see README, "What the demo trains, and why".
    "mnist": dict(
        run_dir="runs/mnist",
        data="mnist",
        image_size=32,
        autoencoder="auto",  # ditlab's KL-VAE with its defaults: 1,600 steps of 16 images
        vae_downsample=4,
        vae_latent_channels=4,
        model="DiT-S/2",
        depth=4,
        hidden_size=192,
        num_heads=3,
        patch_size=2,
        process="flow",  # at equal compute, DDPM (linear, eps) reached 20% accuracy where flow reached 94%
        learn_sigma=False,
        time_sampling="logit_normal",
        steps=2000,
        global_batch_size=64,  # more, smaller steps: lower loss than batch 128 or 256 at equal time
        lr=1e-3,
        warmup_steps=100,
        ema_decay=0.995,
        ckpt_every=500,
        log_every=50,
        sampler="euler",
        sample_steps=25,
        cfg_scale=1.5,  # measured: 1.0 too varied to be right, 2.0 too uniform (README)
        eval_num=1000,
    ),
    # The text demo: prompts with digit, thickness and slant, 10 combinations never seen in training.
    # Chosen by measurement: see README, "What the text demo trains, and why", and docs/text_to_image.md.
    "mnist-text": dict(
        run_dir="runs/mnist-text",
        data="mnist-captions-holdout",  # mnist-captions without the 10 held-out combinations
        condition="text",
        text_encoder="minilm",
        text_max_length=24,  # every template caption fits (at most 16 MiniLM tokens)
        image_size=32,
        autoencoder="auto",
        vae_downsample=4,
        vae_latent_channels=4,
        model="DiT-S/2",
        depth=4,
        hidden_size=192,
        num_heads=3,
        patch_size=2,
        block="pixart",
        process="flow",
        learn_sigma=False,
        time_sampling="logit_normal",
        steps=2000,
        global_batch_size=64,
        lr=1e-3,
        warmup_steps=100,
        ema_decay=0.995,
        ckpt_every=500,
        log_every=50,
        sampler="euler",
        sample_steps=25,
        cfg_scale=2.0,  # 1.5 misses the seen-slant bar, 3.0 the Frechet bar (docs/text_to_image.md)
        eval_num=1000,
    ),
    # The paper's recipe (Peebles & Xie 2023, §4): DiT-XL/2 on ImageNet 256 with the SD-VAE.
    "imagenet256-xl2": dict(
        run_dir="runs/imagenet256-xl2",
        data="",  # required: --data /path/to/imagenet/train (class subfolders) or --latents CACHE
        image_size=256,
        flip=True,
        autoencoder="sd-vae-ft-ema",
        model="DiT-XL/2",
        process="ddpm",
        schedule="linear",
        learn_sigma=True,
        cond_dropout_prob=0.1,
        steps=400_000,
        global_batch_size=256,
        lr=1e-4,
        weight_decay=0.0,
        warmup_steps=0,
        grad_clip=0.0,
        ema_decay=0.9999,
        ema_warmup=False,
        autocast="bf16",
        num_workers=8,
        ckpt_every=50_000,
        log_every=100,
        sampler="ddpm",
        sample_steps=250,
        cfg_scale=1.5,
    ),
    # The video demo (issue 14; README "Video"): moving digits, 80 classes (digit x direction), the class demo's
    # VAE recipe on the frames, a small interleaved space-time DiT. Sized to 15 minutes on 2 CPU cores (docs/video.md
    # has the measured figures against minutes of training).
    "moving-mnist": dict(
        run_dir="runs/moving-mnist",
        data="moving-mnist",
        image_size=48,
        num_frames=8,
        autoencoder="auto",
        vae_downsample=4,  # 12x12x4 latents per frame: a VAE of this shape kept 98.8% of test frames readable
        vae_latent_channels=4,
        model="DiT-S/2",
        depth=4,  # 4 blocks of full 3-D attention over the clip's 128 tokens
        hidden_size=192,
        num_heads=3,
        patch_size=3,  # 16 tokens per frame; patch 2 (288 per clip) learns faster per step but samples 4x slower
        video_layout="full",  # at the preset's steps: direction 28% against 14% interleaved (4+4 blocks, patch 4)
        class_factors="10,8",  # digit + direction embeddings: higher digit accuracy than 80 rows at equal steps
        process="flow",
        learn_sigma=False,
        time_sampling="logit_normal",
        steps=2500,  # with the VAE, encoding, sampling and scoring 13-14 min on 2 cores (docs/video.md)
        global_batch_size=16,
        lr=1e-3,
        warmup_steps=100,
        ema_decay=0.995,
        ckpt_every=500,
        log_every=100,
        num_workers=0,
        sampler="euler_maruyama",  # the SDE with the ODE's marginals: ahead of euler, heun, dpmpp_2m at equal cost
        sample_steps=10,
        cfg_scale=9.0,  # swept 1.5-18: figures improve up to ~13, but 13 draws striped strokes (docs/video.md)
        eval_num=800,  # 10 per class
    ),
    # Seconds-scale video runs for tests: 4-frame moving digits on a 36-px canvas, a few-step VAE, a tiny model.
    "moving-mnist-tiny": dict(
        run_dir="runs/moving-mnist-tiny",
        data="moving-mnist",
        image_size=36,
        num_frames=4,
        num_videos=64,
        autoencoder="auto",
        vae_downsample=4,
        vae_steps=4,
        vae_batch_size=8,
        model="DiT-S/2",
        depth=1,
        hidden_size=32,
        num_heads=2,
        patch_size=3,
        process="flow",
        learn_sigma=False,
        steps=6,
        global_batch_size=8,
        lr=1e-3,
        ema_decay=0.9,
        ckpt_every=3,
        log_every=3,
        num_workers=0,
        sampler="euler",
        sample_steps=3,
        tensorboard=False,
    ),
    # Seconds-scale runs for tests: 8x8 digits in pixel space, a 2-block model.
    "digits-tiny": dict(
        run_dir="runs/digits-tiny",
        data="digits",
        image_size=8,
        autoencoder="pixel",
        model="DiT-S/2",
        depth=2,
        hidden_size=64,
        num_heads=2,
        patch_size=2,
        steps=20,
        global_batch_size=32,
        lr=1e-3,
        ema_decay=0.99,
        ckpt_every=10,
        log_every=5,
        num_workers=0,
        sampler="ddim",
        sample_steps=10,
        tensorboard=False,
    ),
}
