"""Tiny models for the serve tests (random DiTs in pixel space, stand-in text and video pipelines), model
folders on disk, a ``ditlab serve`` subprocess on a free port, and headless Chromium."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
import torch
from torch import nn

from ditlab.autoencoders import load_autoencoder
from ditlab.conditioning import ClassCondition, Condition, NoCondition
from ditlab.diffusion import create_process
from ditlab.models import create_model
from ditlab.models.io import save_pretrained
from ditlab.sampling import Pipeline, SamplingDefaults

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def random_dit(num_classes: int = 3, size: int = 8, name: str = "DiT-Test/2", seed: int = 0) -> nn.Module:
    """A DiT whose every weight is random (a fresh adaLN-Zero model would output zeros)."""
    model = create_model(name, input_size=size, in_channels=1, num_classes=num_classes, learn_sigma=False)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def tiny_pipeline(num_classes: int = 3, class_names: Sequence[str] | None = None, steps: int = 6) -> Pipeline:
    condition = ClassCondition(num_classes, class_names) if num_classes else NoCondition()
    return Pipeline(random_dit(num_classes), create_process("flow"), load_autoencoder("pixel", channels=1), condition,
                    (1, 8, 8), defaults=SamplingDefaults(sampler="euler", steps=steps, cfg_scale=1.0),
                    info={"image_size": 8, "source": "/secret/folder", "vae_folder": tempfile.gettempdir()})


class Shrink(nn.Module):
    """A stand-in network of any input shape: the velocity x - cond (flow), so samples move towards ``cond``."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor | None = None, **_: Any) -> torch.Tensor:
        target = context.reshape(-1, *([1] * (x.dim() - 1))) if context is not None else 0.0
        return self.scale * (x - target)


class FakeTextCondition(Condition):
    """A text condition in miniature: a prompt's length (mod 3, minus 1) is its whole embedding."""

    kind: ClassVar[str] = "text"
    keys: ClassVar[tuple[str, ...]] = ("context",)

    def records(self, metas):
        return {}

    def batch(self, records, choice=None):
        return {}

    def null(self, n, device="cpu"):
        return {"context": torch.zeros(n, device=device)}

    def prompts(self, prompts: Sequence[str]):
        return {"context": torch.tensor([len(p) % 3 - 1.0 for p in prompts])}

    def describe(self, cond):
        return [""] * len(cond["context"])

    def model_fields(self):
        return {}

    def to_dict(self):
        return {"kind": "text"}


def text_pipeline() -> Pipeline:
    return Pipeline(Shrink(), create_process("flow"), load_autoencoder("pixel", channels=1), FakeTextCondition(),
                    (1, 8, 8), defaults=SamplingDefaults(sampler="euler", steps=4, cfg_scale=1.0))


def video_pipeline(info: dict[str, Any] | None = None) -> Pipeline:
    return Pipeline(Shrink(), create_process("flow"), load_autoencoder("pixel", channels=1), NoCondition(),
                    (1, 3, 8, 8), defaults=SamplingDefaults(sampler="euler", steps=4, cfg_scale=1.0), info=info)


def write_model_folder(folder: Path, *, num_classes: int, class_names: Sequence[str] | None = None,
                       size: int = 8, name: str = "DiT-Test/2", steps: int = 6) -> Path:
    """A model folder ``Pipeline.load`` reads (random weights, flow, pixel space)."""
    save_pretrained(random_dit(num_classes, size, name), folder)
    condition = ClassCondition(num_classes, class_names) if num_classes else NoCondition()
    (folder / "pipeline.json").write_text(json.dumps({
        "process": {"kind": "flow"}, "condition": condition.to_dict(), "autoencoder": "pixel",
        "sampling": {"sampler": "euler", "steps": steps, "cfg_scale": 1.0}}))
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    """``ditlab serve`` in a subprocess on a free loopback port."""

    def __init__(self, models: Sequence[Path], *flags: str, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        self.log = log
        self._log_file = open(log, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([sys.executable, "-m", "ditlab.cli", "serve", *map(str, models),
                                      "--port", str(self.port), *flags], stdout=self._log_file,
                                     stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ditlab serve exited with {self.proc.returncode}: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/api/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"ditlab serve did not answer within 120 s: {log.read_text()[-2000:]}")

    def rss_mb(self) -> float:
        """Resident memory of the server process (MiB)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()


def chromium(tmp_path: Path):
    """A headless Chromium driven by Selenium (Debian's chromium + chromium-driver); skips with the reason
    when they are missing (``make test`` installs them with apt-get where it can)."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed: pip install -e '.[dev]'")
    binary = os.environ.get("DITLAB_CHROMIUM", CHROMIUM)
    driver_path = os.environ.get("DITLAB_CHROMEDRIVER", CHROMEDRIVER)
    if not (Path(binary).is_file() and (Path(driver_path).is_file() or shutil.which("chromedriver"))):
        pytest.skip(f"no headless Chromium here ({binary}, {driver_path}): `apt-get install chromium chromium-driver` "
                    "(make test does where it may)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    profile = tempfile.mkdtemp(prefix="chromium-", dir=tmp_path)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1200,900", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver_path if Path(driver_path).is_file() else
                                            shutil.which("chromedriver")), options=options)
