"""Bad inputs across the whole CLI: each is refused with exit code 2 and one line ``error: ...`` naming the
problem (no traceback), and no file that existed before is changed or removed.

Every case runs against the same small world of files (a trained run, damaged copies of it, image folders,
config files, checkpoints); the world is hashed before and after each case. Notes and warnings about
individual files (one line each) may come before the error line.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from ditlab.cli import main
from ditlab.runlock import lock_folder
from ditlab.training import checkpoint as ckpt

TINY = ["--preset", "digits-tiny", "--global_batch_size", "16", "--steps", "2"]
T = ["train", *TINY]
# a text model on a captioned 8x8 folder (issue 12)
TEXT = ["--image_size", "8", "--autoencoder", "pixel", "--condition", "text", "--block", "pixart",
        "--text_max_length", "8", "--global_batch_size", "4"]
UNWRITABLE = "/sys/ditlab-bad-input"  # refused even to root (sysfs), unlike a chmod-ed folder
IN_USE = f"is in use by PID {os.getpid()} on {socket.gethostname()} since "  # {w}/busy: locked by this process

# (id, argv with {w} = the world folder, a fragment the one-line message must contain)
CASES = [
    # --- train: config, presets, YAML, types, ranges
    ("train-unknown-preset", ["train", "--preset", "nope"], "unknown preset 'nope'"),
    ("train-unknown-key", [*T, "--stepz", "5"], "unknown config key 'stepz': did you mean steps?"),
    ("train-wrong-type", [*T, "--steps", "abc"], "'steps' expects int"),
    ("train-zero-steps", [*T, "--steps", "0"], "steps must be >= 1"),
    ("train-negative-steps", [*T, "--steps", "-3"], "steps must be >= 1"),
    ("train-nan-lr", [*T, "--lr", "nan"], "lr must be > 0"),
    ("train-lr-schedule", [*T, "--lr_schedule", "step"],
     "unknown lr_schedule 'step': choose constant, cosine or linear"),
    ("train-lr-decay-steps", [*T, "--lr_decay_steps", "-1"], "lr_decay_steps must be >= 0"),
    ("train-bool", [*T, "--flip", "maybe"], "'flip' expects bool"),
    ("train-flag-without-value", [*T, "--lr"], "--lr needs a value"),
    ("train-class-factors-text", [*T, "--class_factors", "10,x"], "class_factors must be comma-separated integers"),
    ("train-class-factors-product", [*T, "--class_factors", "3,4"], "whose product is num_classes (10)"),
    ("train-bad-yaml", [*T, "--config", "{w}/bad.yaml"], "is not valid YAML at line 2"),
    ("train-yaml-not-mapping", [*T, "--config", "{w}/list.yaml"], "must hold a mapping"),
    ("train-yaml-unknown-key", [*T, "--config", "{w}/unknown.yaml"], "unknown config key 'stepz'"),
    ("train-yaml-wrong-type", [*T, "--config", "{w}/types.yaml"], "'steps' expects int, got 'many'"),
    ("train-yaml-missing", [*T, "--config", "{w}/missing.yaml"], "not found"),
    # --- train: data, sizes, model, process
    ("train-missing-data", [*T, "--data", "{w}/nope", "--run_dir", "{w}/new1"], "does not exist"),
    ("train-empty-data", [*T, "--data", "{w}/empty", "--run_dir", "{w}/new2"], "no images found"),
    ("train-corrupt-images", [*T, "--data", "{w}/corrupt", "--global_batch_size", "2", "--run_dir", "{w}/new3"],
     "none of the first 64 images of the dataset can be read"),
    ("train-image-size-vs-patch", [*T, "--image_size", "7", "--run_dir", "{w}/new4"], "not divisible by patch size 2"),
    ("train-batch-larger-than-data", [*T, "--global_batch_size", "5000", "--run_dir", "{w}/new5"],
     "fewer than the global batch size 5000"),
    ("train-heads", [*T, "--num_heads", "5", "--run_dir", "{w}/new6"], "not divisible by num_heads 5"),
    ("train-unknown-model", [*T, "--model", "DiT-Q/3", "--run_dir", "{w}/new7"], "unknown model 'DiT-Q/3'"),
    ("train-unknown-sampler", [*T, "--sampler", "nope", "--run_dir", "{w}/new8"],
     "'nope' does not run the ddpm process: pass --sampler"),
    ("train-process-without-its-sampler", ["train", "--preset", "mnist", "--sampler", "ddpm", "--run_dir", "{w}/new13"],
     "'ddpm' does not run the flow process: pass --sampler with one of euler, heun"),
    ("train-too-many-sample-steps", [*T, "--sample_steps", "5000", "--run_dir", "{w}/new9"],
     "steps must be in [1, 1000]"),
    ("train-missing-autoencoder", [*T, "--autoencoder", "{w}/no-ae", "--run_dir", "{w}/new10"], "not found"),
    ("train-missing-latent-cache", [*T, "--latents", "{w}/no-cache", "--run_dir", "{w}/new11"], "no latent cache"),
    ("train-unknown-device", [*T, "--device", "tpu", "--run_dir", "{w}/new12"], "unknown device 'tpu'"),
    # --- train: run directories and checkpoints
    ("train-run-dir-is-a-file", [*T, "--run_dir", "{w}/notes.txt"], "notes.txt is a file: pass a folder"),
    ("train-unwritable-run-dir", [*T, "--run_dir", UNWRITABLE], "cannot write run directory"),
    ("train-checkpoint-of-another-model", [*T, "--run_dir", "{w}/run", "--depth", "3"], "holds a run with depth=2"),
    ("train-truncated-checkpoint", [*T, "--steps", "4", "--run_dir", "{w}/run-truncated"], "is damaged"),
    ("train-damaged-meta", [*T, "--steps", "4", "--run_dir", "{w}/run-meta"], "damaged meta.json"),
    ("train-damaged-run-config", [*T, "--run_dir", "{w}/run-config"], "is not valid JSON"),
    ("train-run-dir-in-use", [*T, "--run_dir", "{w}/busy"], "run directory '{w}/busy' " + IN_USE),
    # --- train: captions and text encoders (issue 12)
    ("train-metadata-not-json", [*T, *TEXT, "--data", "{w}/captions-bad-json", "--run_dir", "{w}/new14"],
     "metadata.jsonl line 2 is not JSON"),
    ("train-caption-not-utf8", [*T, *TEXT, "--data", "{w}/captions-latin1", "--run_dir", "{w}/new15"],
     "0.txt is not UTF-8 text (line 1): save it as UTF-8"),
    ("train-text-encoder-not-a-folder", [*T, *TEXT, "--data", "{w}/captions", "--text_encoder", "{w}/notes.txt",
                                         "--run_dir", "{w}/new16"], "is a file, not a folder"),
    ("train-text-encoder-not-an-encoder", [*T, *TEXT, "--data", "{w}/captions", "--text_encoder", "{w}/images",
                                           "--run_dir", "{w}/new17"], "has no config.json"),
    ("train-text-condition-without-captions", [*T, *TEXT, "--data", "{w}/images", "--run_dir", "{w}/new18"],
     "--condition text needs a captioned dataset"),
    ("train-unknown-text-null", [*T, *TEXT, "--text_null", "zeros"], "text_null must be empty or learned"),
    ("sample-prompt-for-class-model", ["sample", "{w}/run", "--prompt", "a 3", "--out", "{w}/new.png"],
     "this model is class-conditional: use --class instead of a prompt"),
    ("sample-class-for-text-model", ["sample", "{w}/text-run", "--class", "3", "--out", "{w}/new.png"],
     "this model is a text model: use --prompt instead of class labels"),
    ("sample-empty-prompts-file", ["sample", "{w}/text-run", "--prompts-file", "{w}/blank.txt", "--out",
                                   "{w}/new.png"], "holds no prompt: write one prompt per line"),
    ("sample-missing-prompts-file", ["sample", "{w}/text-run", "--prompts-file", "{w}/nope.txt", "--out",
                                     "{w}/new.png"], "prompts file '{w}/nope.txt' not found"),
    ("sample-negative-prompt-for-class-model", ["sample", "{w}/run", "--negative-prompt", "a 3", "--out",
                                                "{w}/new.png"], "--negative-prompt needs a text model"),
    # --- sample
    ("sample-missing-run", ["sample", "{w}/nope"], "does not exist"),
    ("sample-not-a-run", ["sample", "{w}/images"], "neither a run directory nor a model folder"),
    ("sample-class-out-of-range", ["sample", "{w}/run", "--class", "10"], "outside the model's classes 0..9"),
    ("sample-class-not-a-number", ["sample", "{w}/run", "--class", "x"], "neither a class number nor a class name"),
    ("sample-zero-num", ["sample", "{w}/run", "--num", "0"], "--num must be >= 1"),
    ("sample-num-not-int", ["sample", "{w}/run", "--num", "abc"], "invalid int value: 'abc'"),
    ("sample-negative-cfg", ["sample", "{w}/run", "--cfg", "-1"], "--cfg must be >= 0"),
    ("sample-unknown-sampler", ["sample", "{w}/run", "--sampler", "nope", "--out", "{w}/new.png"], "does not run the"),
    ("sample-too-many-steps", ["sample", "{w}/run", "--steps", "5000", "--out", "{w}/new.png"], "steps must be in"),
    ("sample-out-under-a-file", ["sample", "{w}/run", "--out", "{w}/notes.txt/grid.png"],
     "cannot create output folder"),
    ("sample-unwritable-out", ["sample", "{w}/run", "--out", f"{UNWRITABLE}.png"], "is not writable"),
    ("sample-out-is-a-folder", ["sample", "{w}/run", "--out", "{w}/images"], "is a folder"),
    ("sample-truncated-ema", ["sample", "{w}/run-truncated", "--out", "{w}/new.png"], "is damaged"),
    ("sample-checkpoint-of-another-model", ["sample", "{w}/run-other", "--out", "{w}/new.png"], "another model"),
    ("sample-missing-autoencoder", ["sample", "{w}/run-no-ae", "--out", "{w}/new.png"], "not found"),
    ("sample-damaged-meta", ["sample", "{w}/run-meta", "--out", "{w}/new.png"], "damaged meta.json"),
    # --- video
    ("train-video-folder-unreadable", [*T, "--data", "{w}/badvideos", "--num_frames", "4", "--run_dir", "{w}/new_v1"],
     "none of the 2 videos"),
    ("train-video-clips-too-short", [*T, "--data", "{w}/shortvideos", "--num_frames", "8", "--run_dir", "{w}/new_v2"],
     "no clip in"),
    ("train-frames-vs-temporal-patch", ["train", "--preset", "moving-mnist-tiny", "--temporal_patch_size", "3",
                                        "--run_dir", "{w}/newv16"],
     "num_frames 4 is not divisible by temporal_patch_size 3"),
    ("train-default-frames-vs-temporal-patch", ["train", "--preset", "moving-mnist-tiny", "--num_frames", "0",
                                                "--temporal_patch_size", "3", "--run_dir", "{w}/newv17"],
     "8 frames are not divisible by the temporal patch size 3"),
    ("train-moving-digits-flipped", ["train", "--preset", "moving-mnist-tiny", "--flip", "true", "--run_dir",
                                     "{w}/newv18"], "cannot be flipped"),
    ("train-moving-digits-small-canvas", ["train", "--preset", "moving-mnist-tiny", "--image_size", "32", "--run_dir",
                                          "{w}/newv19"], "at least 34 px"),
    ("sample-video-as-png", ["sample", "{w}/run-video", "--out", "{w}/new.png"], "cannot write a video as '.png'"),
    ("sample-video-unknown-extension", ["sample", "{w}/run-video", "--out", "{w}/new.avi"],
     "cannot write a video as '.avi'"),
    ("sample-image-model-as-video", ["sample", "{w}/run", "--out", "{w}/new.gif"],
     "this model makes images, not videos"),
    ("sample-video-zero-fps", ["sample", "{w}/run-video", "--fps", "0"], "--fps must be positive"),
    ("sample-video-trajectory", ["sample", "{w}/run-video", "--trajectory", "{w}/new_t.png"],
     "this is a video model: drop --trajectory"),
    ("extract-video-folder-unreadable", ["extract-latents", "{w}/badvideos", "--autoencoder", "pixel", "--image-size",
                                         "8", "--num-frames", "4", "--out", "{w}/c5"], "none of the 2 videos"),
    # --- eval
    ("eval-empty-folder", ["eval", "{w}/empty", "{w}/images"], "holds 0 image(s)"),
    ("eval-corrupt-image", ["eval", "{w}/corrupt", "{w}/images"], "cannot read image"),
    ("eval-float-npz", ["eval", "{w}/float.npz", "{w}/images"], "ADM batches are uint8"),
    ("eval-not-images", ["eval", "{w}/notes.txt", "{w}/images"], "is not a folder or an .npz"),
    ("eval-unknown-metric", ["eval", "{w}/images", "{w}/images", "--metrics", "foo"], "unknown metric"),
    ("eval-zero-batch", ["eval", "{w}/images", "{w}/images", "--batch-size", "0"], "--batch-size must be"),
    # --- extract-latents
    ("extract-missing-data", ["extract-latents", "{w}/nope", "--autoencoder", "pixel", "--out", "{w}/c1"],
     "does not exist"),
    ("extract-missing-autoencoder", ["extract-latents", "digits", "--autoencoder", "{w}/no-ae", "--out", "{w}/c2"],
     "not found"),
    ("extract-out-is-a-file", ["extract-latents", "digits", "--autoencoder", "pixel", "--image-size", "8", "--out",
                               "{w}/notes.txt", "--no-progress", "--workers", "0"], "is a file"),
    ("extract-unwritable-out", ["extract-latents", "digits", "--autoencoder", "pixel", "--image-size", "8", "--out",
                                UNWRITABLE, "--no-progress", "--workers", "0"], "Operation not permitted"),
    ("extract-corrupt-images", ["extract-latents", "{w}/corrupt", "--autoencoder", "pixel", "--image-size", "8",
                                "--out", "{w}/c3", "--no-progress", "--workers", "0"], "3 of 3 images are unreadable"),
    ("extract-zero-batch", ["extract-latents", "digits", "--autoencoder", "pixel", "--out", "{w}/c4",
                            "--batch-size", "0"], "--batch-size must be a positive integer"),
    ("extract-cache-in-use", ["extract-latents", "digits", "--autoencoder", "pixel", "--image-size", "8", "--out",
                              "{w}/busy", "--no-progress", "--workers", "0"], "latent cache '{w}/busy' " + IN_USE),
    # --- train-vae
    ("train-vae-missing-data", ["train-vae", "{w}/nope", "--out", "{w}/vae1"], "does not exist"),
    ("train-vae-zero-steps", ["train-vae", "digits", "--out", "{w}/vae2", "--steps", "0"], "--steps must be"),
    ("train-vae-bad-downsample", ["train-vae", "digits", "--out", "{w}/vae3", "--downsample", "3"],
     "--downsample must be 1, 2, 4 or 8"),
    ("train-vae-empty-data", ["train-vae", "{w}/empty", "--out", "{w}/vae4"], "no images found"),
    ("train-vae-out-is-a-file", ["train-vae", "digits", "--out", "{w}/notes.txt", "--steps", "1"], "is a file"),
    ("train-vae-unwritable-out", ["train-vae", "digits", "--out", UNWRITABLE, "--steps", "1", "--no-progress"],
     "(Operation not permitted): choose a writable --out"),
    ("train-vae-out-in-use", ["train-vae", "digits", "--out", "{w}/busy", "--steps", "1", "--no-progress"],
     "autoencoder folder '{w}/busy' " + IN_USE),
    # --- sample-many
    ("sample-many-missing-run", ["sample-many", "{w}/nope", "--out", "{w}/many1"], "does not exist"),
    ("sample-many-zero-num", ["sample-many", "{w}/run", "--out", "{w}/many2", "--num", "0"], "--num must be >= 1"),
    ("sample-many-out-is-a-file", ["sample-many", "{w}/run", "--out", "{w}/notes.txt", "--num", "2", "--steps", "2"],
     "cannot create output folder"),
    ("sample-many-unknown-sampler", ["sample-many", "{w}/run", "--out", "{w}/many3", "--num", "2", "--sampler", "nope"],
     "does not run the"),
    ("sample-many-out-in-use", ["sample-many", "{w}/run", "--out", "{w}/busy", "--num", "2", "--steps", "2"],
     "output folder '{w}/busy' " + IN_USE),
    # --- scale
    ("scale-unknown-model", ["scale", "digits", "--models", "DiT-Q/2", "--budget", "10", "--out", "{w}/scale1"],
     "unknown model(s)"),
    ("scale-zero-budget", ["scale", "digits", "--models", "DiT-S/2", "--budget", "0", "--out", "{w}/scale2"],
     "--budget must be >= 1"),
    ("scale-out-in-use", ["scale", "digits", "--models", "DiT-S/2", "--budget", "2", "--out", "{w}/busy",
                          "--image_size", "8", "--autoencoder", "pixel"], "study folder '{w}/busy' " + IN_USE),
    ("scale-guided-cfg-zero", ["scale", "digits", "--models", "DiT-S/2", "--budget", "10", "--guided-cfg", "0",
                               "--out", "{w}/scale3"], "--guided-cfg must be > 0"),
    ("scale-guided-cfg-same", ["scale", "digits", "--models", "DiT-S/2", "--budget", "10", "--cfg_scale", "1",
                               "--guided-cfg", "1", "--out", "{w}/scale4"], "differ from the study's cfg_scale"),
    ("design-study-class-design", ["design-study", "--designs", "pixart,adaLN-Zero", "--compute", "10", "--out",
                                   "{w}/designs1"], "'adaLN-Zero' is not a text design"),
    # --- convert
    ("convert-missing-file", ["convert", "official", "{w}/nope.pt", "{w}/cv1"], "does not exist"),
    ("convert-truncated-safetensors", ["convert", "official", "{w}/truncated.safetensors", "{w}/cv2"], "damaged"),
    ("convert-not-a-checkpoint", ["convert", "official", "{w}/garbage.pt", "{w}/cv3"], "cannot read"),
    ("convert-unknown-format", ["convert", "bogus", "{w}/garbage.pt", "{w}/cv4"], "invalid choice: 'bogus'"),
    ("convert-not-a-model-dir", ["convert", "to-official", "{w}/images", "{w}/cv5.pt"], "is not a saved ditlab model"),
    # --- designs, sizes and diffusers architectures (issue 13)
    ("train-bucket-size-vs-patch", [*T, "--data", "{w}/images", "--buckets", "8x7", "--global_batch_size", "2",
                                    "--run_dir", "{w}/new19"], "bucket 8x7 is not divisible by 2"),
    ("train-text-design-on-class-data", [*T, "--block", "mmdit", "--run_dir", "{w}/new20"],
     "block 'mmdit' is a text-to-image design but the data gives class labels"),
    ("sample-height-vs-patch", ["sample", "{w}/run", "--height", "7", "--out", "{w}/new.png"],
     "--height 7 is not a multiple of 2"),
    ("convert-diffusers-other-architecture", ["convert", "diffusers", "{w}/unet", "{w}/cv6"],
     "holds a diffusers UNet2DConditionModel, which ditlab cannot convert"),
    # --- flops, and the command itself
    ("flops-unknown-model", ["flops", "DiT-Q/9"], "unknown model 'DiT-Q/9'"),
    ("flops-size-vs-patch", ["flops", "DiT-S/2", "--image-size", "7"], "is not divisible by patch"),
    ("flops-zero-channels", ["flops", "DiT-S/2", "--in-channels", "0"], "--in-channels must be >= 1"),
    ("unknown-command", ["nonexistent"], "invalid choice: 'nonexistent'"),
]


def _damaged_copy(run: Path, name: str) -> Path:
    """A copy of ``run`` without its latent cache (re-encoded when needed), to be damaged by the caller."""
    copy = run.parent / name
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("latents.safetensors"))
    return copy


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Iterator[Path]:
    w = tmp_path_factory.mktemp("world")
    run = w / "run"
    assert main(["train", *TINY, "--ckpt_every", "2", "--run_dir", str(run)]) == 0
    latest = ckpt.latest_checkpoint(run)

    trunc = ckpt.latest_checkpoint(_damaged_copy(run, "run-truncated"))
    for name in ("model.safetensors", "ema.safetensors"):
        (trunc / name).write_bytes((latest / name).read_bytes()[:100])
    meta = ckpt.latest_checkpoint(_damaged_copy(run, "run-meta"))
    (meta / "meta.json").write_text('{"step": 2, "model": ')
    other = ckpt.latest_checkpoint(_damaged_copy(run, "run-other"))
    weights = ckpt.load_weights(other / "ema.safetensors")
    save_file({k: torch.zeros(*(s + 1 for s in v.shape)) for k, v in weights.items()}, str(other / "ema.safetensors"))
    no_ae = _damaged_copy(run, "run-no-ae")
    config = json.loads((no_ae / "config.json").read_text())
    (no_ae / "config.json").write_text(json.dumps({**config, "autoencoder": str(w / "no-ae")}))
    no_ae_meta = ckpt.latest_checkpoint(no_ae) / "meta.json"  # where sampling looks for the autoencoder
    no_ae_meta.write_text(json.dumps({**json.loads(no_ae_meta.read_text()), "autoencoder_spec": str(w / "no-ae")}))
    (_damaged_copy(run, "run-config") / "config.json").write_text("{not json")

    assert main(["train", "--preset", "moving-mnist-tiny", "--steps", "2", "--ckpt_every", "2", "--run_dir",
                 str(w / "run-video")]) == 0
    (w / "badvideos").mkdir()
    for name in ("a.mp4", "b.gif"):
        (w / "badvideos" / name).write_bytes(b"not a video at all")
    from ditlab.data.video_io import write_video

    write_video(w / "shortvideos" / "x.gif", np.zeros((3, 8, 8, 1), np.uint8))

    (w / "captions").mkdir()
    for i in range(4):
        Image.fromarray(np.full((8, 8, 3), 60 * i, np.uint8)).save(w / "captions" / f"{i}.png")
        (w / "captions" / f"{i}.txt").write_text(f"a square of grey {i}\n", encoding="utf-8")
    assert main(["train", *TINY, *TEXT, "--data", str(w / "captions"), "--run_dir", str(w / "text-run")]) == 0
    shutil.copytree(w / "captions", w / "captions-bad-json")
    (w / "captions-bad-json" / "metadata.jsonl").write_text('{"file_name": "0.png", "text": "a"}\n{"file_name": \n')
    shutil.copytree(w / "captions", w / "captions-latin1")
    (w / "captions-latin1" / "0.txt").write_bytes("un carré gris".encode("latin-1"))
    (w / "blank.txt").write_text("\n  \n", encoding="utf-8")
    (w / "empty").mkdir()
    (w / "corrupt" / "a").mkdir(parents=True)
    for i in range(3):
        (w / "corrupt" / "a" / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * i)  # header, no image
    (w / "images").mkdir()
    for i in range(4):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(w / "images" / f"{i}.png")
    (w / "bad.yaml").write_text("steps: 10\nlr: 1e-4: 2\n")
    (w / "list.yaml").write_text("- steps\n- 10\n")
    (w / "unknown.yaml").write_text("stepz: 10\n")
    (w / "types.yaml").write_text("steps: many\n")
    (w / "notes.txt").write_text("not a folder\n")
    (w / "unet").mkdir()
    (w / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    np.savez(w / "float.npz", arr_0=np.zeros((4, 8, 8, 3), np.float32))
    (w / "garbage.pt").write_bytes(b"this is not a checkpoint")
    (w / "truncated.safetensors").write_bytes((latest / "model.safetensors").read_bytes()[:100])
    with lock_folder(w / "busy", flag="--out", what="folder"):  # a writer at work there (this process)
        yield w


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_table_is_broad():
    commands = {argv[0] for _, argv, _ in CASES}
    assert len(CASES) >= 25
    assert {"train", "sample", "eval", "extract-latents", "convert", "flops", "train-vae", "sample-many",
            "scale"} <= commands
    assert len({case_id for case_id, _, _ in CASES}) == len(CASES)


@pytest.mark.parametrize("argv,fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_cleanly(world, argv, fragment, capsys):
    argv = [a.replace("{w}", str(world)) for a in argv]
    fragment = fragment.replace("{w}", str(world))
    before = _snapshot(world)
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse usage errors exit from inside the parser
        code = exit_.code
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured.err
    assert "Traceback" not in captured.err
    assert lines and lines[-1].startswith("error: "), captured.err
    assert not [line for line in lines[:-1] if "error" in line.lower()], captured.err  # the error is one line
    assert fragment in lines[-1], lines[-1]
    after = _snapshot(world)
    changed = sorted(k for k in before if after.get(k) != before[k])
    assert not changed, f"existing files changed or removed: {changed}"
