"""The HTTP API in process (FastAPI's TestClient): what it answers, that its images are the pipeline's,
that its errors name the field and the fix, and that the server keeps answering after bad requests."""
from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from serve_fakes import text_pipeline, tiny_pipeline, video_pipeline

from ditlab.serve import Limits, ServedModels, create_app


def decode_png(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


@pytest.fixture(scope="module")
def pipes():
    return {"shapes": tiny_pipeline(3, ["circle", "square", "star"]), "free": tiny_pipeline(0),
            "words": text_pipeline(), "clips": video_pipeline()}


@pytest.fixture(scope="module")
def client(pipes):
    app = create_app(ServedModels(pipes), Limits(max_num=8, max_steps=50, queue_size=4))
    with TestClient(app) as c:
        yield c


def test_models_describe_what_each_takes_and_no_paths(client):
    body = client.get("/api/models").json()
    by_name = {m["name"]: m for m in body["models"]}
    assert list(by_name) == ["shapes", "free", "words", "clips"]
    shapes = by_name["shapes"]
    assert shapes["condition"] == "class" and shapes["class_names"] == ["circle", "square", "star"]
    assert by_name["free"]["condition"] == "none" and by_name["words"]["condition"] == "text"
    assert by_name["clips"]["video"] is True and by_name["clips"]["latent_shape"] == [1, 3, 8, 8]
    assert by_name["shapes"]["defaults"] == {"sampler": "euler", "steps": 6, "cfg_scale": 1.0}
    assert body["limits"]["max_num"] == 8
    assert "/secret/folder" not in json.dumps(body)  # the served folders are nobody's business
    assert "vae_folder" not in shapes and shapes["image_size"] == 8  # nor any other path on this machine
    spec = client.get("/openapi.json").json()
    assert "/api/generate" in spec["paths"] and "/api/jobs/{job_id}/events" in spec["paths"]
    schema = spec["paths"]["/api/generate"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"class", "prompt", "num", "steps", "cfg", "sampler", "seed"} <= set(schema["properties"])


def test_generate_answers_the_pipelines_images(client, pipes):
    r = client.post("/api/generate", json={"model": "shapes", "class": "square", "num": 3, "steps": 5, "seed": 7,
                                           "cfg": 2.0})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "done" and body["descriptions"] == ["square"] * 3 and body["labels"] == [1, 1, 1]
    assert body["settings"] == {"model": "shapes", "num": 3, "steps": 5, "cfg": 2.0, "sampler": "euler", "seed": 7,
                                "class": [1]}
    expected = pipes["shapes"](labels=[1], num=3, steps=5, seed=7, cfg_scale=2.0).images
    got = np.stack([decode_png(b) for b in body["images"]])[..., None]
    np.testing.assert_array_equal(got, expected)
    # the downloads hold the same pixels: one PNG, the whole set as the ADM .npz
    png = client.get(body["downloads"]["png"][2])
    assert png.headers["content-type"] == "image/png"
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png.content)))[..., None], expected[2])
    npz = np.load(io.BytesIO(client.get(body["downloads"]["npz"]).content))
    np.testing.assert_array_equal(npz["arr_0"], expected)
    assert npz["labels"].tolist() == [1, 1, 1]


def test_random_seed_is_reported_and_reproduces(client):
    first = client.post("/api/generate", json={"model": "free", "num": 2}).json()
    seed = first["settings"]["seed"]
    again = client.post("/api/generate", json={"model": "free", "num": 2, "seed": seed}).json()
    assert again["images"] == first["images"]
    other = client.post("/api/generate", json={"model": "free", "num": 2, "seed": seed + 1}).json()
    assert other["images"][0] == first["images"][1]  # image i uses seed + i


def test_text_and_video_models(client, pipes):
    r = client.post("/api/generate", json={"model": "words", "prompt": ["ab", "abc"], "num": 2, "cfg": 2.0,
                                           "negative_prompt": "a", "seed": 0})
    assert r.status_code == 200, r.text
    assert r.json()["prompts"] == ["ab", "abc"]
    expected = pipes["words"](prompts=["ab", "abc"], num=2, cfg_scale=2.0, negative_prompt="a").images
    np.testing.assert_array_equal(decode_png(r.json()["images"][1])[..., None], expected[1])
    r = client.post("/api/generate", json={"model": "clips", "num": 2, "fps": 4})
    assert r.status_code == 200, r.text
    body = r.json()
    assert decode_png(body["images"][0]).shape == (8, 24)  # three frames in a row
    assert len(body["videos"]) == 2 and base64.b64decode(body["videos"][0])[:6] == b"GIF89a"
    mp4 = client.get(body["downloads"]["mp4"][1])
    assert mp4.status_code == 200 and mp4.content[4:8] == b"ftyp"
    npz = np.load(io.BytesIO(client.get(body["downloads"]["npz"]).content))
    assert npz["arr_0"].shape == (2, 3, 8, 8, 1)


def test_video_fields_follow_describe():
    """A video model that names its fps in describe() gets it by default (page and API alike)."""
    app = create_app(ServedModels({"clips": video_pipeline({"fps": 12})}))
    with TestClient(app) as c:
        assert c.get("/api/models").json()["models"][0]["fps"] == 12
        r = c.post("/api/generate", json={"num": 1, "steps": 2})
        assert r.status_code == 200 and r.json()["settings"]["fps"] == 12.0 and r.json()["settings"]["frames"] == 3


def test_api_docs_are_served_without_internet(client):
    page = client.get("/docs")
    assert page.status_code == 200 and "swagger" in page.text.lower()
    assert "cdn.jsdelivr.net" not in page.text and "unpkg.com" not in page.text  # assets served locally


BAD = [
    ({"model": "shapes", "steps": 51}, 422, "steps", "steps must be between 1 and 50, got 51"),
    ({"model": "shapes", "steps": 0}, 422, "steps", "between 1 and 50"),
    ({"model": "shapes", "num": 9}, 422, "num", "num must be between 1 and 8"),
    ({"model": "shapes", "cfg": -1}, 422, "cfg", "cfg must be between 0 and 20"),
    ({"model": "shapes", "cfg": 1e9}, 422, "cfg", "cfg must be between 0 and 20"),
    ({"model": "shapes", "size": 64}, 422, "size", "makes 8x8 images, not 64: drop size or pass 8"),
    ({"model": "shapes", "class": 3}, 422, "class", "class 3 is outside this model's classes: use a label 0..2"),
    ({"model": "shapes", "class": "cat"}, 422, "class", "not a class name of this model: use a label 0..2 or one of"),
    ({"model": "shapes", "prompt": "a cat"}, 422, "prompt", "class-conditional: send class instead"),
    ({"model": "free", "class": 1}, 422, "class", "unconditional: drop class"),
    ({"model": "words", "class": 1}, 422, "class", "a text model: send prompt instead"),
    ({"model": "shapes", "negative_prompt": "x"}, 422, "negative_prompt", "needs a text model"),
    ({"model": "shapes", "sampler": "ddpm"}, 422, "sampler", "unknown sampler 'ddpm' for this model: choose one of"),
    ({"model": "nope"}, 422, "model", "unknown model 'nope': choose one of shapes, free, words, clips"),
    ({"class": 1}, 422, "model", "4 models are served: name one in model"),
    ({"model": "shapes", "steps": "5"}, 422, "steps", "steps must be an integer, got \"5\""),
    ({"model": "shapes", "num": 2.5}, 422, "num", "num must be an integer"),
    ({"model": "shapes", "seed": -1}, 422, "seed", "seed must be between 0"),
    ({"model": "shapes", "path": "/etc/passwd"}, 422, "path", "unknown field 'path': the API takes model, class"),
    ({"model": "shapes", "fps": 8}, 422, "fps", "fps is for video models"),
    ({"model": "clips", "frames": 5}, 422, "frames", "makes 3 frames, not 5"),
    ({"model": "clips", "fps": 0}, 422, "fps", "fps must be between 1 and 60"),
    ({"model": "words", "prompt": "x" * 1001}, 422, "prompt", "keep each under 1000"),
]


@pytest.mark.parametrize("body, status, field, message", BAD, ids=[str(b) for b, *_ in BAD])
def test_bad_values_name_the_field_and_the_fix(client, body, status, field, message):
    r = client.post("/api/generate", json=body)
    assert r.status_code == status, r.text
    assert r.json()["field"] == field and message in r.json()["error"] and r.json()["code"] == status


@pytest.mark.parametrize("raw, message", [
    (b'{"class": 1,', "malformed JSON (Expecting property name"),
    (b"[1, 2]", "must be a JSON object, not a JSON list"),
    (b"", "has no JSON body"),
    (b"\xff\xfe", "not UTF-8"),
])
def test_malformed_bodies_are_400(client, raw, message):
    r = client.post("/api/generate", content=raw)
    assert r.status_code == 400 and message in r.json()["error"]


def test_plain_curl_bodies_and_limits_on_size(client):
    # `curl -d` sends form-encoded headers: the body is read as JSON anyway
    r = client.post("/api/generate", content=b'{"model": "free", "steps": 2}',
                    headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200
    r = client.post("/api/generate", content=b'{"prompt": "' + b"a" * 70000 + b'"}')
    assert r.status_code == 413 and "over 64 KiB" in r.json()["error"]


def test_unknown_routes_and_jobs_are_json_errors(client):
    assert client.get("/api/nothing").json()["code"] == 404
    r = client.get("/api/jobs/../../etc/passwd")
    assert r.status_code == 404
    r = client.get("/api/jobs/abc")
    assert r.status_code == 404 and "no job 'abc'" in r.json()["error"]
    r = client.get("/api/generate")
    assert r.status_code == 405 and r.json()["code"] == 405
    assert client.get("/static/../app.py").status_code == 404
    assert client.get("/api/health").json()["ok"] is True  # still answering


def test_other_web_pages_cannot_drive_the_server(client, pipes):
    """No login, so a page elsewhere must not make the user's browser generate (CSRF) or read (DNS rebinding)."""
    body = {"model": "free", "steps": 2}
    for origin in ("http://evil.example", "null", "http://testserver.evil.example"):
        r = client.post("/api/generate", json=body, headers={"Origin": origin})
        assert r.status_code == 403 and "are refused" in r.json()["error"], origin
    assert client.post("/api/generate", json=body, headers={"Origin": "http://testserver"}).status_code == 200
    assert client.get("/api/models", headers={"Origin": "http://evil.example"}).status_code == 200  # reads: CORS
    app = create_app(ServedModels({"free": pipes["free"]}), allowed_hosts=("localhost", "127.0.0.1"))
    with TestClient(app, base_url="http://127.0.0.1:7860") as local:
        assert local.get("/api/models").status_code == 200
        r = local.get("/api/models", headers={"Host": "rebound.evil.example:7860"})
        assert r.status_code == 403 and "is not served here" in r.json()["error"]
