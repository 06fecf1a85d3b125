"""benchmarks/gpu_train.py is ready to run: its FLOP count, peak table and a CPU smoke run."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_train.py"


@pytest.fixture(scope="module")
def gpu_train():
    spec = importlib.util.spec_from_file_location("gpu_train", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_xl2_flops_are_the_papers(gpu_train):
    # Peebles & Xie, Table 4: DiT-XL/2 at 256 px = 118.6 Gflops (multiply-adds)
    assert gpu_train.forward_flops_per_sample("DiT-XL/2", 32) == pytest.approx(2 * 118.6e9, rel=1e-3)


@pytest.mark.parametrize("name, tflops", [
    ("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H100 NVL", 835.0),
    ("NVIDIA H200", 989.0), ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA A10G", 70.0), ("NVIDIA L4", 121.0),
    ("NVIDIA L40S", 362.0), ("NVIDIA GeForce RTX 4090", 165.2),
])
def test_peak_table(gpu_train, monkeypatch, name, tflops):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: name)
    assert gpu_train.peak_flops(torch.device("cuda"), None) == (tflops * 1e12, name)
    assert gpu_train.peak_flops(torch.device("cuda"), 100.0)[0] == 100e12  # an explicit peak wins


def test_cpu_smoke_run(gpu_train, tmp_path):
    out = tmp_path / "r.json"
    args = ["--device", "cpu", "--model", "DiT-Test/2", "--image-size", "32", "--batch", "2", "--dtype", "fp32",
            "--steps", "2", "--warmup", "1", "--variants", "eager,ckpt,sync,math_attn", "--peak-tflops", "0.5",
            "--json", str(out)]
    assert gpu_train.main(args) == 0
    result = json.loads(out.read_text())
    assert [r["variant"] for r in result["rows"]] == ["eager", "ckpt", "sync", "math_attn"]
    for r in result["rows"]:
        assert r["samples_per_s"] > 0 and r["final_loss"] > 0
        assert r["mfu"] == pytest.approx(3 * result["forward_flops_per_sample"] * r["samples_per_s"] / 0.5e12)
    # every variant trains the same model from the same seed on the same batch: the same first losses
    losses = [r["final_loss"] for r in result["rows"]]
    assert max(losses) - min(losses) < 1e-4 * max(losses)
