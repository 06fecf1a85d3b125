"""`ditlab eval`: bad input, caching, --save-stats, IS, and agreement with reference computations."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from eval_data import mnist_digits, write_folder

from ditlab.cli import main
from ditlab.evaluation import inception as inception_mod
from ditlab.evaluation.inception_net import TORCHVISION_TO_GRAPH
from ditlab.evaluation.metrics import compute_metrics, inception_score


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["eval", *map(str, argv)])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture
def sets(tmp_path):
    """GEN: a folder of 4 MNIST digits; REF: an ADM .npz of 4 other digits (k=3 P/R needs > 3)."""
    gen = write_folder(tmp_path / "gen", mnist_digits(4, 0)[0])
    ref = tmp_path / "ref.npz"
    np.savez(ref, mnist_digits(4, 500)[0])
    return gen, ref


@pytest.fixture
def spy(monkeypatch):
    """Records the features every InceptionFeatures.extract call returns."""
    calls = []
    original = inception_mod.InceptionFeatures.extract

    def extract(self, batches, total=None, progress=True, desc="inception"):
        out = original(self, batches, total, progress=False, desc=desc)
        calls.append(out)
        return out

    monkeypatch.setattr(inception_mod.InceptionFeatures, "extract", extract)
    return calls


def test_bad_input_is_one_line(capsys, tmp_path, sets):
    gen, ref = sets
    write_folder(tmp_path / "one", mnist_digits(1)[0])
    np.savez(tmp_path / "nokeys.npz", images=np.zeros((3, 8, 8, 3), np.uint8))
    np.savez(tmp_path / "nosigma.npz", mu=np.zeros(2048))
    np.savez(tmp_path / "stats.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    np.savez(tmp_path / "stats768.npz", mu=np.zeros(768), sigma=np.eye(768))  # pytorch-fid --dims 768
    cases = [
        ((tmp_path / "one", ref), "holds 1 image"),
        ((gen, tmp_path / "nokeys.npz"), "neither 'arr_0'"),
        ((gen, tmp_path / "nosigma.npz"), "no 'sigma'"),
        ((gen, tmp_path / "missing"), "does not exist"),
        ((gen, ref, "--inception", tmp_path / "none.pth"), "not found"),
        ((gen, tmp_path / "stats.npz", "--metrics", "fid,kid"), "statistics only"),
        ((tmp_path / "stats.npz", ref), "is a statistics file"),
        ((gen, tmp_path / "stats768.npz"), "768-d statistics"),
        ((gen, ref, "--metrics", "fid,lpips"), "unknown metric"),
        ((gen, ref, "--batch-size", "0"), "positive integer"),
        ((gen, ref, "--metrics", "pr", "--pr-k", "4"), "needs more than 4 images"),
    ]
    for argv, expected in cases:
        rc, out, err = _run(capsys, *argv)
        assert rc == 2 and out == "", argv
        assert err.startswith("error: ") and err.count("\n") == 1 and expected in err, err


def test_inception_score_needs_the_head(capsys, sets):
    rc, _, err = _run(capsys, *sets, "--metrics", "fid,is")
    assert rc == 2 and "classification head" in err and err.count("\n") == 1


@pytest.mark.slow
def test_eval_cache_and_save_stats(capsys, tmp_path, sets, spy):
    gen, ref = sets
    rc, out, err = _run(capsys, gen, ref, "--json", "--kid-subset-size", "3", "--kid-subsets", "4")
    assert rc == 0, err
    res = json.loads(out)
    assert res["num_gen"] == 4 and res["num_ref"] == 4 and res["resize"] == "tf"
    (gen_feats, _), (ref_feats, _) = spy
    expected = compute_metrics(gen_feats, ref_feats, "fid,kid,pr", kid_subsets=4, kid_subset_size=3)
    assert res["metrics"] == pytest.approx(expected, rel=1e-9)
    assert "biased upwards" in err  # fewer than 2048 images

    # The reference's features are cached: --save-stats runs no Inception at all.
    rc, out, _ = _run(capsys, "--save-stats", ref, tmp_path / "ref_stats.npz")
    assert rc == 0 and "wrote" in out and len(spy) == 2
    stats = np.load(tmp_path / "ref_stats.npz")
    np.testing.assert_allclose(stats["mu"], ref_feats.mean(0), rtol=1e-6)

    # FID against the statistics equals FID against the images.
    rc, out, err = _run(capsys, gen, tmp_path / "ref_stats.npz", "--json")
    assert rc == 0 and len(spy) == 3 and "FID only" in err
    res2 = json.loads(out)
    assert set(res2["metrics"]) == {"fid"}
    assert res2["metrics"]["fid"] == pytest.approx(res["metrics"]["fid"], rel=1e-6)

    rc, out, _ = _run(capsys, gen, ref, "--no-cache", "--metrics", "fid", "--quiet")
    assert rc == 0 and len(spy) == 5 and out.splitlines()[1].split()[0] == "FID"
    assert float(out.splitlines()[1].split()[1]) == pytest.approx(res["metrics"]["fid"], rel=1e-5)


@pytest.mark.slow
def test_inception_score_with_a_head(capsys, tmp_path, sets, spy):
    # A pytorch-fid-layout file: the shipped graph's tensors plus a (random) 1008-way head.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        script = torch.jit.load(str(inception_mod.default_weights_path()))
    to_tv = {g: tv for tv, g in TORCHVISION_TO_GRAPH.items()}
    sd = {to_tv[k.removeprefix("net.layers.")]: v for k, v in script.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    sd["fc.weight"], sd["fc.bias"] = torch.randn(1008, 2048, generator=g) * 0.05, torch.randn(1008, generator=g)
    torch.save(sd, tmp_path / "pt_inception.pth")
    gen, ref = sets
    rc, out, err = _run(capsys, gen, ref, "--metrics", "is", "--inception", tmp_path / "pt_inception.pth", "--json")
    assert rc == 0, err
    (feats, logits), _ = spy
    np.testing.assert_allclose(logits, feats @ sd["fc.weight"].double().numpy().T + sd["fc.bias"].double().numpy(),
                               rtol=1e-4, atol=1e-4)
    assert json.loads(out)["metrics"]["is_mean"] == pytest.approx(inception_score(logits)[0], rel=1e-9)


def _reference_fid(a: np.ndarray, b: np.ndarray) -> float:
    """FID written out from the definition: np.mean, np.cov (N - 1), and Tr((S1 S2)^{1/2}).

    With S1 = Aᵀ A / (n-1) and S2 = Bᵀ B / (m-1) (A, B centred), the eigenvalues of S1 S2 are the
    squared singular values of A Bᵀ / sqrt((n-1)(m-1)), so the trace is that matrix's nuclear
    norm: what pytorch-fid's sqrtm returns, without a 2048 x 2048 sqrtm (minutes on a busy CPU).
    """
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ac, bc = a - mu1, b - mu2
    tr_covmean = np.linalg.svd(ac @ bc.T, compute_uv=False).sum() / np.sqrt((len(a) - 1) * (len(b) - 1))
    diff = mu1 - mu2
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


@pytest.mark.slow
def test_agreement_with_reference_computations(capsys, tmp_path):
    """Issue item 4: same images, same weights file, FID within 1% of the reference pipelines.

    pytorch-fid needs torchvision (not importable beside this CPU torch), so its pipeline is
    written out here on the shipped TorchScript: ToTensor (x/255), F.interpolate bilinear to 299,
    2x - 1, pool3, then FID from the definition. The TF pipeline (ADM, TTUR) is NVIDIA's formulation of the TF1
    resize with grid_sample, then (x - 128) / 128.
    """
    gen_imgs, ref_imgs = mnist_digits(5, 0)[0], mnist_digits(5, 2000)[0]
    gen = write_folder(tmp_path / "gen", gen_imgs)
    ref = tmp_path / "ref.npz"
    np.savez(ref, ref_imgs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        script = torch.jit.load(str(inception_mod.default_weights_path())).eval()

    def pytorch_fid_features(imgs):
        x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255.0
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        with torch.no_grad():
            return script(2 * x - 1).double().numpy()

    def tf_features(imgs):
        x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float()
        n, _, h, w = x.shape
        theta = torch.eye(2, 3).repeat(n, 1, 1)
        theta[:, 0, 2] += 1 / w - 1 / 299
        theta[:, 1, 2] += 1 / h - 1 / 299
        grid = F.affine_grid(theta, [n, 3, 299, 299], align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        with torch.no_grad():
            return script((x - 128) / 128).double().numpy()

    results = {}
    for mode, feats_fn in (("pytorch-fid", pytorch_fid_features), ("tf", tf_features)):
        rc, out, err = _run(capsys, gen, ref, "--metrics", "fid", "--json", "--resize", mode, "--no-cache")
        assert rc == 0, err
        ours = json.loads(out)["metrics"]["fid"]
        theirs = _reference_fid(feats_fn(gen_imgs), feats_fn(ref_imgs))
        results[mode] = (ours, theirs)
        assert ours == pytest.approx(theirs, rel=0.01), mode
    print("FID ditlab vs reference:", results)


def test_reference_fid_formula_matches_sqrtm():
    from ditlab.evaluation.frechet import feature_statistics, frechet_distance

    rng = np.random.default_rng(0)
    a, b = np.abs(rng.normal(size=(6, 24))), np.abs(rng.normal(loc=0.5, size=(9, 24)))
    expected = frechet_distance(*feature_statistics(a), *feature_statistics(b))
    assert _reference_fid(a, b) == pytest.approx(expected, rel=1e-6)
