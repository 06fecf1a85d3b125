"""ditlab: Diffusion Transformers (Peebles & Xie, 2023) for latent diffusion, end to end."""

__version__ = "0.1.0"
