"""``ditlab serve`` under load and on the command line: 50 concurrent API requests against a tiny model all
complete with the right images or are refused with 429, the server's memory stays bounded and it still
answers; the CLI refuses bad flags and folders in one line and warns about non-loopback hosts."""
from __future__ import annotations

import base64
import io
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image
from serve_fakes import ServeProcess, free_port, write_model_folder

from ditlab.cli import main
from ditlab.sampling import Pipeline

REQUESTS = 50


def _request(url: str, i: int) -> tuple[int, dict, float]:
    """POST one generation; follow a queued job to its end. Returns (first status, final body, seconds)."""
    start = time.monotonic()
    with httpx.Client(timeout=120) as client:
        r = client.post(f"{url}/api/generate", json={"class": i % 3, "num": 2, "steps": 8, "seed": 1000 + i})
        body = r.json()
        if r.status_code == 202:
            while (s := client.get(f"{url}/api/jobs/{body['job_id']}")).json()["status"] in ("queued", "running"):
                time.sleep(0.05)
            body = s.json()
    return r.status_code, body, time.monotonic() - start


def _burst(url: str) -> tuple[list[tuple[int, dict, float]], float]:
    start = time.monotonic()
    with ThreadPoolExecutor(REQUESTS) as pool:
        answers = list(pool.map(lambda i: _request(url, i), range(REQUESTS)))
    return answers, time.monotonic() - start


def test_fifty_concurrent_requests_complete_or_get_429(tmp_path):
    folder = write_model_folder(tmp_path / "load", num_classes=3)
    server = ServeProcess([folder], "--queue-size", "8", "--max-num", "4", log=tmp_path / "serve.log")
    try:
        assert httpx.post(f"{server.url}/api/generate", json={"class": 0, "steps": 8}).status_code == 200  # warm
        before = server.rss_mb()
        first, seconds = _burst(server.url)
        after_first = server.rss_mb()
        second, seconds2 = _burst(server.url)
        after_second = server.rss_mb()
        health = httpx.get(f"{server.url}/api/health").json()
    finally:
        server.stop()
    pipe = Pipeline.load(folder)
    for answers in (first, second):
        codes = [code for code, _, _ in answers]
        assert set(codes) <= {200, 202, 429}, codes
        assert codes.count(429) < REQUESTS and all(b["status"] == "done" for c, b, _ in answers if c != 429)
        for i, (code, body, _) in enumerate(answers):
            if code == 429:
                assert "busy" in body["error"] and body["code"] == 429
                continue
            expected = pipe(labels=[i % 3], num=2, steps=8, seed=1000 + i).images
            got = np.stack([np.asarray(Image.open(io.BytesIO(base64.b64decode(x)))) for x in body["images"]])
            np.testing.assert_array_equal(got[..., None], expected)
    served = sum(c != 429 for c, _, _ in first)
    print(f"\nload: {REQUESTS} concurrent requests x2: {served} + {sum(c != 429 for c, _, _ in second)} served, "
          f"{[c for c, _, _ in first].count(429)} + {[c for c, _, _ in second].count(429)} got 429; "
          f"{seconds:.2f} s and {seconds2:.2f} s; {health['batches_run']} batches; server RSS {before:.0f} -> "
          f"{after_first:.0f} -> {after_second:.0f} MiB")
    assert health["ok"] and health["queued"] == 0 and health["running"] == 0
    assert health["jobs"] <= 64  # finished results are kept up to --keep-jobs, not forever
    assert after_first - before < 150 and after_second - after_first < 50  # bounded: no growth per request


def test_cli_refuses_bad_flags_and_folders_in_one_line(tmp_path, capsys):
    folder = write_model_folder(tmp_path / "m", num_classes=3)
    for argv, message in [
        (["serve", str(folder), "--port", "0"], "--port must be 1..65535"),
        (["serve", str(folder), "--queue-size", "0"], "--queue-size must be >= 1"),
        (["serve", str(tmp_path / "missing")], "does not exist"),
        (["serve", str(folder), "--host", "no.such.host.invalid"], "is not an address of this machine"),
    ]:
        assert main([*argv, "--port", str(free_port())] if "--port" not in argv else argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", str(folder), "--port", str(port)]) == 2
        assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


def test_cli_warns_when_the_host_is_not_loopback(tmp_path, monkeypatch, capsys):
    import uvicorn

    started = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: started.update(kw))
    folder = write_model_folder(tmp_path / "m", num_classes=0)
    with pytest.warns(UserWarning, match="not loopback: anyone who can reach this machine"):
        assert main(["serve", str(folder), "--host", "0.0.0.0", "--port", str(free_port())]) == 0
    assert started["host"] == "0.0.0.0"
    assert main(["serve", str(folder), str(folder), "--port", str(free_port())]) == 0  # loopback: no warning
    assert "serving m, m-2 at http://localhost:" in capsys.readouterr().out
