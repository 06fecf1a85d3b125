"""Video folders: every container, frame folders, classes, strides, crops, and broken or short videos."""
from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

av = pytest.importorskip("av")

from ditlab.data.video_folder import VideoFolderDataset, count_frames  # noqa: E402
from ditlab.data.video_io import write_video  # noqa: E402
from ditlab.errors import DataError, UserError  # noqa: E402


def _ramp(num: int, h: int = 16, w: int = 16) -> np.ndarray:
    """uint8 (num, h, w, 3) gray frames whose level encodes the frame index: 20 * i."""
    return np.broadcast_to((np.arange(num) * 20).astype(np.uint8)[:, None, None, None], (num, h, w, 3)).copy()


def _write_av(path, frames: np.ndarray, codec: str, fps: int = 8) -> None:
    """Containers write_video does not produce (webm, avi), straight through PyAV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for f in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        out.mux(stream.encode())


def _frame_folder(folder, frames: np.ndarray, ext: str = ".png") -> None:
    folder.mkdir(parents=True)
    for i, f in enumerate(frames):  # f1, f2, ..., f12: natural order, not f1, f10, f11, f12, f2
        Image.fromarray(f).save(folder / f"f{i + 1}{ext}")


@pytest.fixture
def class_folder(tmp_path):
    root = tmp_path / "videos"
    write_video(root / "cat" / "a.mp4", _ramp(10))
    write_video(root / "cat" / "b.gif", _ramp(9))
    _frame_folder(root / "dog" / "clip1", _ramp(12))
    _write_av(root / "dog" / "c.webm", _ramp(8), "libvpx-vp9")
    _write_av(root / "dog" / "nested" / "d.avi", _ramp(8), "mpeg4")
    (root / "dog" / "notes.txt").write_text("not a video")
    (root / ".hidden").mkdir()
    write_video(root / ".hidden" / "x.gif", _ramp(9))
    return root


def test_class_folder_of_every_kind(class_folder):
    ds = VideoFolderDataset(class_folder, 8, num_frames=4, frame_stride=2, flip=False)
    assert ds.class_names == ["cat", "dog"] and ds.num_classes == 2 and len(ds) == 5
    names = [f.split("videos/")[1] for f in ds.files]
    assert names == ["cat/a.mp4", "cat/b.gif", "dog/c.webm", "dog/clip1", "dog/nested/d.avi"]
    assert ds.labels.tolist() == [0, 0, 1, 1, 1] and ds.lengths == [10, 9, 8, 12, 8]
    for i in range(len(ds)):
        frames, meta = ds[i]
        assert frames.shape == (3, 4, 8, 8) and frames.dtype == torch.float32 and meta == {"label": ds.labels[i].item()}
        levels = (frames.mean(dim=(0, 2, 3)) + 1) * 127.5  # (F,)
        tol = 0.5 if ds.files[i].endswith(("clip1", ".gif")) else 4  # PNG and gray GIF are exact
        np.testing.assert_allclose(levels.numpy(), [0, 40, 80, 120], atol=tol)  # frames 0, 2, 4, 6
    assert ds.bad_files() == [] and ds.short_files() == [] and ds.report() == "no videos skipped"


def test_flat_folder_of_frame_folders_is_unconditional(tmp_path):
    for k in range(3):
        _frame_folder(tmp_path / f"clip{k}", _ramp(5), ".jpg")
    ds = VideoFolderDataset(tmp_path, 16, num_frames=5, channels=1)
    assert ds.num_classes == 0 and ds.class_names == [] and len(ds) == 3
    frames, meta = ds[1]
    assert frames.shape == (1, 5, 16, 16) and meta == {}
    assert count_frames(str(tmp_path / "clip0")) == 5


def test_unreadable_and_short_videos_are_skipped_counted_and_reported(tmp_path):
    write_video(tmp_path / "good.mp4", _ramp(8))
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50)
    (tmp_path / "empty.avi").write_bytes(b"")
    write_video(tmp_path / "short.gif", _ramp(3))
    _frame_folder(tmp_path / "shortclip", _ramp(2))
    with pytest.warns(UserWarning, match=r"skipped 2 unreadable .* and 2 shorter than 8 frames"):
        ds = VideoFolderDataset(tmp_path, 8, num_frames=8)
    assert len(ds) == 1 and ds.files[0].endswith("good.mp4")
    assert [p.rsplit("/", 1)[1] for p in ds.bad_files()] == ["broken.mp4", "empty.avi"]
    assert [p.rsplit("/", 1)[1] for p in ds.short_files()] == ["short.gif", "shortclip"]


def test_a_video_that_breaks_later_returns_none_and_is_listed(tmp_path):
    write_video(tmp_path / "a.mp4", _ramp(8))
    write_video(tmp_path / "b.mp4", _ramp(8))
    _frame_folder(tmp_path / "c", _ramp(8))
    ds = VideoFolderDataset(tmp_path, 8, num_frames=8)
    (tmp_path / "a.mp4").write_bytes(b"overwritten with junk")
    for f in sorted((tmp_path / "c").iterdir())[4:]:
        f.unlink()  # frames lost after the probe: now too short
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert ds[0] is None and ds[2] is None
    assert ds[1] is not None
    assert ds.bad_files() == [str(tmp_path / "a.mp4")] and ds.short_files() == [str(tmp_path / "c")]
    copy = pickle.loads(pickle.dumps(ds))  # the flags survive a trip to a worker
    assert copy.bad_files() == ds.bad_files() and copy.short_files() == ds.short_files()


def test_folders_with_nothing_usable_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no videos found"):
        VideoFolderDataset(tmp_path, 8)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="no videos found"):
        VideoFolderDataset(tmp_path, 8)
    (tmp_path / "x.mp4").write_bytes(b"junk")
    with pytest.raises(DataError, match="none of the 1 videos .* could be read"):
        VideoFolderDataset(tmp_path, 8)
    write_video(tmp_path / "y.gif", _ramp(4))
    with pytest.raises(DataError, match="lower the clip length or frame stride") as err, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        VideoFolderDataset(tmp_path, 8, num_frames=3, frame_stride=2)  # needs 5 frames, y.gif has 4
    assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="does not exist"):
        VideoFolderDataset(tmp_path / "missing", 8)
    with pytest.raises(DataError, match="positive"):
        VideoFolderDataset(tmp_path, 8, num_frames=0)


def test_loose_clips_beside_class_folders_are_refused(tmp_path):
    write_video(tmp_path / "cls" / "a.gif", _ramp(4))
    write_video(tmp_path / "loose.gif", _ramp(4))
    with pytest.raises(DataError, match="loose clips"):
        VideoFolderDataset(tmp_path, 8, num_frames=2)


def test_frames_are_centre_cropped_like_image_folders(tmp_path):
    from ditlab.data.transforms import center_crop_arr

    frames = np.zeros((3, 30, 60, 3), dtype=np.uint8)
    frames[:, :, 15:45] = 255  # the middle half of a wide frame is white
    _frame_folder(tmp_path / "wide", frames)
    ds = VideoFolderDataset(tmp_path, 16, num_frames=3, flip=False)
    clip, _ = ds[0]
    want = center_crop_arr(Image.fromarray(frames[0]), 16)  # (16, 16, 3)
    got = ((clip[:, 0].permute(1, 2, 0) + 1) * 127.5).round().to(torch.uint8).numpy()
    assert np.array_equal(got, want) and got.mean() > 240


def test_random_offset_and_whole_clip_flips(tmp_path):
    frames = _ramp(12) + 20  # frame i at level 20 (i + 1)
    frames[:, :, :8] = 0  # left half black
    _frame_folder(tmp_path / "clip", frames)
    ds = VideoFolderDataset(tmp_path, 16, num_frames=3, frame_stride=2, random_offset=True, flip=True)
    torch.manual_seed(0)
    starts, flips = set(), set()
    for _ in range(40):
        clip, _ = ds[0]  # (3, 3, 16, 16)
        left = ((clip[0, :, :, :8].mean(dim=(1, 2)) + 1) * 127.5).round()  # (F,)
        right = ((clip[0, :, :, 8:].mean(dim=(1, 2)) + 1) * 127.5).round()
        flipped = bool(left[0] > 0)
        lit, dark = (left, right) if flipped else (right, left)
        assert (dark == 0).all()  # every frame of the clip flipped alike
        start = int(lit[0]) // 20 - 1
        assert lit.tolist() == [20.0 * (start + 1 + 2 * k) for k in range(3)]  # consecutive, stride 2
        starts.add(start)
        flips.add(flipped)
    assert flips == {True, False} and starts == set(range(12 - 5 + 1))  # every start 0..7 is drawn
