"""Where evaluation images come from: image folders, ADM ``.npz`` batches, statistics files.

``load_image_source(path)`` checks the input up front (so a bad path fails before minutes of
Inception) and returns an ``ImageSource`` that streams uint8 (B, H, W, 3) batches. Features of a
source are cached under ``$DITLAB_CACHE/inception`` keyed by a hash of its content and of the
Inception weights, so a reference set is embedded once.
"""
from __future__ import annotations

import hashlib
import os
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ditlab.errors import DataError
from ditlab.evaluation.inception import InceptionFeatures, file_sha1, to_uint8_nhwc
from ditlab.evaluation.metrics import FeatureStats
from ditlab.files import atomic_write

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def cache_dir() -> Path:
    """ditlab's cache: ``$DITLAB_CACHE`` or ``~/.cache/ditlab`` (same rule as ``ditlab.data``)."""
    env = os.environ.get("DITLAB_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ditlab"


@dataclass
class ImageSource:
    """A checked evaluation input. ``kind`` is ``folder``, ``npz`` (ADM ``arr_0``) or ``stats``."""

    path: Path
    kind: str
    num_images: int = 0
    stats: FeatureStats | None = None
    files: list[Path] = field(default_factory=list)  # folder: one entry per image
    sizes: list[tuple[int, int]] = field(default_factory=list)  # folder: (H, W) per image
    notes: list[str] = field(default_factory=list)  # things the user should be told
    _npz_header: tuple | None = None  # npz: (shape, dtype)

    def batches(self, batch_size: int = 64) -> Iterator[np.ndarray]:
        """uint8 (B, H, W, 3) batches; all images of a batch share one size."""
        if self.kind == "stats":
            raise ValueError("a statistics file has no images")
        if self.kind == "npz":
            yield from _npz_batches(self.path, batch_size)
            return
        by_size: dict[tuple[int, int], list[Path]] = {}
        for f, s in zip(self.files, self.sizes, strict=True):
            by_size.setdefault(s, []).append(f)
        for files in by_size.values():
            for i in range(0, len(files), batch_size):
                yield np.stack([_read_image(f) for f in files[i : i + batch_size]])

    def content_hash(self) -> str:
        """SHA-1 over the bytes of every image (folder: with relative paths), for caching."""
        if self.kind != "folder":
            return file_sha1(self.path)
        h = hashlib.sha1()
        for f in self.files:
            h.update(str(f.relative_to(self.path)).encode() + b"\0" + file_sha1(f).encode())
        return h.hexdigest()


def _read_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)  # (H, W, 3)
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read image {path} ({err}); remove or replace the file") from err


def _folder_source(path: Path) -> ImageSource:
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if len(files) < 2:
        raise DataError(
            f"{path} holds {len(files)} image(s) ({'/'.join(IMAGE_EXTENSIONS)}); metrics need at"
            " least 2 (thousands for a meaningful FID): point at a folder with more images"
        )
    sizes = []
    for f in files:
        try:
            with Image.open(f) as im:  # reads the header only
                sizes.append((im.height, im.width))
        except OSError as err:
            raise DataError(f"cannot read image {f} ({err}); remove or replace the file") from err
    src = ImageSource(path, "folder", len(files), files=files, sizes=sizes)
    counts = Counter(sizes)
    if len(counts) > 1:
        listed = ", ".join(f"{n}x {h}x{w}" for (h, w), n in counts.most_common(4))
        src.notes.append(
            f"{path} mixes image sizes ({listed}{', ...' if len(counts) > 4 else ''}); each image"
            " is resized to 299x299 for Inception on its own, but FID compares best on equal sizes"
        )
    return src


def _read_npy_header(fp) -> tuple[tuple[int, ...], np.dtype, bool]:
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(fp)
    return np.lib.format.read_array_header_2_0(fp)


def _npz_batches(path: Path, batch_size: int) -> Iterator[np.ndarray]:
    """Stream ``arr_0`` from the zip without loading all of it (50k 256² samples are 10 GB)."""
    with zipfile.ZipFile(path) as zf, zf.open("arr_0.npy") as fp:
        shape, fortran, dtype = _read_npy_header(fp)
        if fortran:  # rare; read it whole
            arr = np.load(path)["arr_0"]
            for i in range(0, len(arr), batch_size):
                yield to_uint8_nhwc(arr[i : i + batch_size])
            return
        per_image = int(np.prod(shape[1:]))
        for start in range(0, shape[0], batch_size):
            n = min(batch_size, shape[0] - start)
            buf = bytearray(fp.read(n * per_image))  # writable, so torch can wrap it
            yield to_uint8_nhwc(np.frombuffer(buf, dtype=np.uint8).reshape((n, *shape[1:])))


def _npz_source(path: Path) -> ImageSource:
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
            if "arr_0" in names:
                with zf.open("arr_0.npy") as fp:
                    shape, _, dtype = _read_npy_header(fp)
                return _check_adm_array(path, shape, dtype)
    except (zipfile.BadZipFile, ValueError, OSError) as err:
        raise DataError(f"cannot read {path} as .npz ({err}); pass an ADM .npz or a stats .npz") from err
    if "mu" in names or "sigma" in names:
        return _stats_source(path, names)
    raise DataError(
        f"{path} has neither 'arr_0' (N x H x W x 3 uint8 images, ADM layout) nor 'mu'/'sigma'"
        f" (statistics); it has {sorted(names)}: write images with np.savez(path, arr_0=images)"
        " or statistics with `ditlab eval --save-stats`"
    )


def _check_adm_array(path: Path, shape: tuple, dtype: np.dtype) -> ImageSource:
    ok_shape = len(shape) == 3 or (len(shape) == 4 and shape[-1] in (1, 3))
    if dtype != np.uint8 or not ok_shape:
        raise DataError(
            f"{path}: arr_0 is {dtype} with shape {shape}; ADM batches are uint8 N x H x W x 3"
            " (convert float samples with ditlab.evaluation.quantize_images)"
        )
    if shape[0] < 2:
        raise DataError(f"{path}: arr_0 holds {shape[0]} image(s); metrics need at least 2")
    return ImageSource(path, "npz", int(shape[0]), _npz_header=(shape, dtype))


def _stats_source(path: Path, names: list[str]) -> ImageSource:
    missing = [k for k in ("mu", "sigma") if k not in names]
    if missing:
        raise DataError(
            f"statistics file {path} has no {' or '.join(repr(m) for m in missing)}; recreate it"
            " with `ditlab eval --save-stats REF OUT.npz`"
        )
    with np.load(path, allow_pickle=False) as z:
        mu, sigma = np.asarray(z["mu"], np.float64), np.asarray(z["sigma"], np.float64)
        num = int(z["num"]) if "num" in z.files else 0
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise DataError(
            f"statistics file {path}: mu {mu.shape} and sigma {sigma.shape} do not fit (want (D,)"
            " and (D, D)); recreate it with `ditlab eval --save-stats`"
        )
    return ImageSource(path, "stats", num, stats=FeatureStats(mu, sigma, num))


def load_image_source(path: str | Path) -> ImageSource:
    """Check and open an evaluation input: an image folder, an ADM ``.npz`` or a stats ``.npz``.

    Raises ``DataError`` (one line, with the fix) for a missing path, fewer than 2 images, an
    ``.npz`` with neither ``arr_0`` nor ``mu``/``sigma``, or a badly shaped array.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        return _folder_source(p)
    if p.is_file() and p.suffix.lower() == ".npz":
        return _npz_source(p)
    if p.is_file():
        raise DataError(f"{p} is not a folder or an .npz file; pass an image folder or an .npz")
    raise DataError(f"{p} does not exist; pass an image folder, an ADM .npz or a stats .npz")


def cached_extract(
    key: str,
    extractor: InceptionFeatures,
    batches: Callable[[], Iterable[np.ndarray]],
    *,
    total: int | None = None,
    progress: bool = True,
    desc: str = "inception",
) -> tuple[np.ndarray, np.ndarray | None]:
    """``extractor.extract(batches())``, cached in ``$DITLAB_CACHE/inception`` under ``key``.

    ``key`` must identify the images' content (e.g. a hash, or a dataset name and version); the
    weights and preprocessing are added to it here. ``batches`` is only called on a cache miss.
    """
    full = hashlib.sha1(f"{key}:{extractor.weights_id}".encode()).hexdigest()
    path = cache_dir() / "inception" / f"{full}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            logits = z["logits"].astype(np.float64) if "logits" in z.files else None
            return z["features"].astype(np.float64), logits
    feats, logits = extractor.extract(batches(), total=total, progress=progress, desc=desc)
    arrays = {"features": feats.astype(np.float32)}  # the network computes in float32: lossless
    if logits is not None:
        arrays["logits"] = logits.astype(np.float32)
    atomic_write(path, lambda tmp: np.savez(tmp, **arrays))  # never a half-written cache entry
    return feats, logits


def source_features(
    source: ImageSource,
    extractor: InceptionFeatures,
    *,
    cache: bool = True,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Inception features (N, 2048) and logits (N, 1008) | None of a folder or ADM source.

    With ``cache``, reuses features computed earlier for the same content (hash of the bytes)
    with the same weights and preprocessing.
    """
    if source.kind == "stats":
        raise ValueError("a statistics source has no features")
    run = lambda: source.batches(extractor.batch_size)  # noqa: E731
    kw = dict(total=source.num_images, progress=progress, desc=source.path.name)
    if cache:
        return cached_extract(source.content_hash(), extractor, run, **kw)
    return extractor.extract(run(), **kw)


def save_stats(path: str | Path, stats: FeatureStats) -> Path:
    """Write ``mu``, ``sigma`` (and ``num``) as an ``.npz`` readable by pytorch-fid and ditlab."""
    path = Path(path).expanduser()
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")  # np.savez would append it anyway
    return atomic_write(path, lambda tmp: np.savez(tmp, mu=stats.mu, sigma=stats.sigma, num=np.int64(stats.num)))
