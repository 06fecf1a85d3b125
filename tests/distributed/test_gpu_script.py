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
    from ditlab.models import fused

    out = tmp_path / "r.json"
    variants = ["eager", "ckpt", "ckpt1", "sync", "math_attn", "fused+graphs"]
    args = ["--device", "cpu", "--model", "DiT-Test/2", "--image-size", "32", "--batch", "2", "--dtype", "fp32",
            "--steps", "2", "--warmup", "1", "--variants", ",".join(variants), "--peak-tflops", "0.5",
            "--json", str(out)]
    assert gpu_train.main(args) == 0
    result = json.loads(out.read_text())
    assert [r["variant"] for r in result["rows"]] == variants
    for r in result["rows"]:
        assert r["samples_per_s"] > 0 and r["final_loss"] > 0
        assert r["mfu"] == pytest.approx(3 * result["forward_flops_per_sample"] * r["samples_per_s"] / 0.5e12)
        assert r["fused"] == ("fused" in r["variant"]) and r["fused_failures"] == {}
        assert r["graph_replays"] == 0 and r["graph_failed"] is None  # CPU: the eager step
    assert not fused.is_enabled()  # the benchmark leaves ditlab's default behind
    # every variant trains the same model from the same seed on the same batch: the same first losses
    losses = [r["final_loss"] for r in result["rows"]]
    assert max(losses) - min(losses) < 1e-4 * max(losses)


def test_variants_parse_into_switches(gpu_train):
    assert gpu_train.parse_variant("eager") == frozenset()
    assert gpu_train.parse_variant("regional+cudnn+graphs") == {"regional", "cudnn", "graphs"}
    assert gpu_train.parse_variant("compiled+ckpt14") == {"whole", "ckpt14"}
    with pytest.raises(ValueError, match="unknown switch"):
        gpu_train.parse_variant("fused+warp")


def _script(name):
    spec = importlib.util.spec_from_file_location(name, SCRIPT.parent / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_batch_source_smoke_run(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))  # it imports benchmarks/latent_cache.py
    out = tmp_path / "b.json"
    args = ["--device", "cpu", "--items", "64", "--batch", "4", "--batches", "3", "--step-rate", "2.0",
            "--json", str(out)]
    assert _script("batch_source").main(args) == 0
    result = json.loads(out.read_text())
    assert result["batches_per_s"] > 0 and result["ratio_to_step_rate"] == pytest.approx(result["batches_per_s"] / 2)


@pytest.mark.slow
def test_gpu_sampling_smoke_run(tmp_path):
    pytest.importorskip("diffusers")
    from ditlab.models import fused

    out = tmp_path / "s.json"
    args = ["--device", "cpu", "--model", "DiT-Test/2", "--batches", "2", "--samplers", "ddim", "--steps-lo", "1",
            "--steps-hi", "2", "--check-steps", "2", "--vae", "tiny", "--dtype", "fp32", "--json", str(out)]
    assert _script("gpu_sampling").main(args) == 0
    result = json.loads(out.read_text())
    assert result["forward_rel_diff"] < 1e-5  # ditlab and diffusers compute the same network
    assert result["ditlab_switches"] == {"graphs": True, "fused": True, "cudnn": True}
    assert result["graph_replays"] == 0 and result["fused_failures"] == {}  # CPU: eager
    assert [r["sampler"] for r in result["rows"]] == ["ddim"]
    assert not fused.is_enabled()  # left at ditlab's default
