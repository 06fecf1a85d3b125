"""Bad launches and switches fail with one line, before any work (no run directory is created)."""
import pytest
import torch

from ditlab.cli import main
from ditlab.config import resolve_config
from ditlab.errors import ConfigError
from ditlab.training import distributed
from ditlab.training.run import autocast_context

TINY = ["train", "--preset", "digits-tiny", "--num_workers", "0"]


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    return err


def test_fsdp_without_torchrun(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert main([*TINY, "--run_dir", str(tmp_path / "r"), "--fsdp"]) == 2
    _one_line_error(capsys, "--fsdp", "torchrun --nproc_per_node")
    assert not (tmp_path / "r").exists()


def test_world_size_not_dividing_the_batch_fails_before_joining(tmp_path, capsys, monkeypatch):
    # WORLD_SIZE=3 with nobody else around: joining the group would hang, so the check must come first
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert main([*TINY, "--run_dir", str(tmp_path / "r"), "--global_batch_size", "32"]) == 2
    _one_line_error(capsys, "global_batch_size 32 does not divide over 3 processes", "multiple of 3")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_autocast_on_cpu(tmp_path, capsys, dtype):
    assert main([*TINY, "--run_dir", str(tmp_path / "r"), "--device", "cpu", "--autocast", dtype]) == 2
    _one_line_error(capsys, f"autocast {dtype}", "--autocast none")
    assert not (tmp_path / "r").exists()


def test_bf16_on_a_gpu_without_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla V100")
    config = resolve_config("digits-tiny", overrides={"autocast": "bf16"})
    with pytest.raises(ConfigError, match="V100 has no bf16 support: use --autocast fp16"):
        autocast_context(config, torch.device("cuda"))


def test_compile_without_a_cpu_compiler(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no g++, c++ or clang++ here
    monkeypatch.delenv("CXX", raising=False)
    assert main([*TINY, "--run_dir", str(tmp_path / "r"), "--device", "cpu", "--compile"]) == 2
    _one_line_error(capsys, "--compile", "C++ compiler", "drop --compile")
    assert not (tmp_path / "r").exists()


def test_compile_on_gpu_without_triton(monkeypatch):
    import torch.utils._triton as triton_probe

    monkeypatch.setattr(triton_probe, "has_triton", lambda: False)
    with pytest.raises(ConfigError, match="needs Triton"):
        distributed.check_compile_backend(torch.device("cuda"))


def test_compile_backend_present_passes(tmp_path, monkeypatch):
    fake = tmp_path / "clang++"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CXX", raising=False)
    distributed.check_compile_backend(torch.device("cpu"))  # found: no error


def test_check_batch_split():
    assert distributed.check_batch_split(32, 4) == 8
    with pytest.raises(ConfigError, match="use a multiple of 3"):
        distributed.check_batch_split(32, 3)
