"""Loading never runs code from a file: weights come from safetensors, anything else through
``torch.load(weights_only=True)``; a checkpoint carrying a malicious pickle is refused without running it."""
from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest
import torch

import ditlab
from ditlab.cli import main
from ditlab.training import checkpoint as ckpt

TINY = ["--preset", "digits-tiny", "--global_batch_size", "16", "--ckpt_every", "2"]


class _Payload:
    """Unpickling this runs ``exec`` on code that creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def _evil_file(path: Path, marker: Path) -> Path:
    torch.save({"optimizer": {}, "step": 2, "x": _Payload(marker)}, path)
    return path


def test_the_payload_is_live(tmp_path):
    """The same kind of file does create its marker when unpickled unsafely, so the tests below can fail."""
    marker = tmp_path / "ran"
    torch.load(_evil_file(tmp_path / "evil.pt", marker), weights_only=False)
    assert marker.exists()


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("safe") / "run"
    assert main(["train", *TINY, "--steps", "2", "--run_dir", str(run)]) == 0
    return run


def _poisoned_copy(trained: Path, tmp_path: Path, marker: Path, name: str = "state.pt") -> Path:
    run = shutil.copytree(trained, tmp_path / "run")
    _evil_file(ckpt.latest_checkpoint(run) / name, marker)
    return run


def test_resume_refuses_a_malicious_training_state(trained, tmp_path, capsys):
    marker = tmp_path / "pwned"
    run = _poisoned_copy(trained, tmp_path, marker)
    capsys.readouterr()
    assert main(["train", *TINY, "--steps", "4", "--run_dir", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: training state") and "was refused" in err
    assert not marker.exists()


def test_sampling_reads_weights_only_from_safetensors(trained, tmp_path, capsys):
    """Sampling needs only the EMA weights: a poisoned state.pt is never opened."""
    marker = tmp_path / "pwned"
    run = _poisoned_copy(trained, tmp_path, marker)
    assert main(["sample", str(run), "--num", "2", "--steps", "2", "--out", str(tmp_path / "g.png")]) == 0
    assert (tmp_path / "g.png").is_file() and not marker.exists()


def test_a_pickle_in_place_of_safetensors_is_refused(trained, tmp_path, capsys):
    marker = tmp_path / "pwned"
    run = _poisoned_copy(trained, tmp_path, marker, name="ema.safetensors")
    capsys.readouterr()
    assert main(["sample", str(run), "--num", "2", "--steps", "2", "--out", str(tmp_path / "g.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is damaged" in err
    assert not marker.exists() and not (tmp_path / "g.png").exists()


def test_convert_refuses_a_malicious_official_checkpoint(tmp_path, capsys):
    marker = tmp_path / "pwned"
    bad = _evil_file(tmp_path / "DiT-XL-2-256x256.pt", marker)
    assert main(["convert", "official", str(bad), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot read" in err and "safely" in err
    assert not marker.exists() and not (tmp_path / "out").exists()


def _unsafe_loads(tree: ast.AST) -> list[str]:
    """Calls that can run code from a file: torch.load without weights_only=True, pickle loads,
    np.load(allow_pickle=True), yaml.load / unsafe_load."""
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        owner = node.func.value.id if isinstance(node.func.value, ast.Name) else ""
        name = f"{owner}.{node.func.attr}"
        kw = {k.arg: k.value for k in node.keywords}
        is_true = lambda v: isinstance(v, ast.Constant) and v.value is True  # noqa: E731
        if name == "torch.load" and not is_true(kw.get("weights_only")):
            found.append(f"line {node.lineno}: torch.load without weights_only=True")
        elif owner in ("pickle", "dill", "cloudpickle") and node.func.attr in ("load", "loads"):
            found.append(f"line {node.lineno}: {name}")
        elif owner in ("np", "numpy") and node.func.attr == "load" and is_true(kw.get("allow_pickle")):
            found.append(f"line {node.lineno}: {name}(allow_pickle=True)")
        elif owner == "yaml" and node.func.attr in ("load", "unsafe_load", "full_load"):
            found.append(f"line {node.lineno}: {name}")
    return found


def test_no_library_code_loads_files_unsafely():
    root = Path(ditlab.__file__).parent
    bad = {}
    for path in sorted(root.rglob("*.py")):
        found = _unsafe_loads(ast.parse(path.read_text(), str(path)))
        if found:
            bad[str(path.relative_to(root))] = found
    assert not bad, f"unsafe loading in ditlab: {bad}"
    # the scanner itself finds what it must
    assert len(_unsafe_loads(ast.parse("torch.load(p)\npickle.loads(b)\nnp.load(p, allow_pickle=True)"))) == 3
