"""The queue behind the API: same-settings requests batched (each keeping its own images), a bounded
queue answered with 429, cancelling that stops the work on the server, failures (and out-of-memory)
answered for the failing request alone, and the progress stream with live previews."""
from __future__ import annotations

import base64
import io
import json
import threading
import time

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from serve_fakes import tiny_pipeline
from torch import nn

from ditlab.serve import Limits, ServedModels, create_app


def wait_until(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


class Gated:
    """Wraps ``ServedModels.run_batch``: batches wait for ``gate``; ``pause_at`` holds a batch at that step until
    ``resume`` is set; ``steps`` records every solver step run."""

    def __init__(self, models: ServedModels, pause_at: int | None = None, step_delay: float = 0.0):
        self.inner = models.run_batch
        self.gate, self.reached, self.resume = threading.Event(), threading.Event(), threading.Event()
        self.gate.set()
        self.pause_at, self.step_delay, self.steps = pause_at, step_delay, []
        models.run_batch = self

    def __call__(self, jobs, on_step):
        self.gate.wait(30)

        def step(i, total, decode):
            self.steps.append(i)
            if i == self.pause_at:
                self.reached.set()
                self.resume.wait(30)
            time.sleep(self.step_delay)
            return on_step(i, total, decode)

        return self.inner(jobs, step)


def make_client(pipes, **limits):
    models = ServedModels(pipes)
    return models, Limits(**{"max_num": 8, "max_steps": 50, "queue_size": 8, **limits})


def state(client, job_id):
    return client.get(f"/api/jobs/{job_id}").json()


def test_same_settings_requests_run_as_one_batch_with_their_own_images():
    pipe = tiny_pipeline(3)
    models, limits = make_client({"m": pipe})
    gated = Gated(models)
    with TestClient(create_app(models, limits)) as client:
        gated.gate.clear()
        first = client.post("/api/generate", json={"class": 0, "steps": 4, "seed": 0, "wait": False}).json()
        wait_until(lambda: state(client, first["job_id"])["status"] == "running")
        b = client.post("/api/generate", json={"class": 1, "num": 2, "steps": 4, "seed": 5, "cfg": 2.0})
        c = client.post("/api/generate", json={"class": [0, 2], "num": 3, "steps": 4, "seed": 9, "cfg": 2.0})
        d = client.post("/api/generate", json={"class": 1, "num": 2, "steps": 5, "seed": 5, "cfg": 2.0})
        assert [r.status_code for r in (b, c, d)] == [202, 202, 202]  # queued behind the first: a job id
        assert [r.json()["position"] for r in (b, c, d)] == [0, 1, 2]
        gated.gate.set()
        ids = [r.json()["job_id"] for r in (b, c, d)]
        wait_until(lambda: all(state(client, i)["status"] == "done" for i in ids))
        done = [state(client, i) for i in ids]
        assert [s["batch_size"] for s in done] == [5, 5, 2]  # b and c together, d (other steps) alone
        assert client.get("/api/health").json()["batches_run"] == 3
        for s, (labels, num, steps, seed) in zip(done, [([1], 2, 4, 5), ([0, 2], 3, 4, 9), ([1], 2, 5, 5)],
                                                 strict=True):
            alone = pipe(labels=labels, num=num, steps=steps, seed=seed, cfg_scale=2.0).images
            got = np.stack([np.asarray(Image.open(io.BytesIO(base64.b64decode(x)))) for x in s["images"]])
            np.testing.assert_array_equal(got[..., None], alone)


def test_a_full_queue_answers_429_and_cancelled_waiters_leave_it():
    models, limits = make_client({"m": tiny_pipeline(3)}, queue_size=2)
    gated = Gated(models)
    with TestClient(create_app(models, limits)) as client:
        gated.gate.clear()
        running = client.post("/api/generate", json={"steps": 3, "wait": False}).json()
        wait_until(lambda: state(client, running["job_id"])["status"] == "running")
        waiting = [client.post("/api/generate", json={"steps": 3, "seed": i}) for i in range(2)]
        assert [r.status_code for r in waiting] == [202, 202]
        full = client.post("/api/generate", json={"steps": 3})
        assert full.status_code == 429 and "busy" in full.json()["error"] and "retry" in full.json()["error"]
        cancelled = client.post(f"/api/jobs/{waiting[0].json()['job_id']}/cancel").json()
        assert cancelled["status"] == "cancelled"
        assert client.post("/api/generate", json={"steps": 3}).status_code == 202  # room again
        gated.gate.set()
        wait_until(lambda: client.get("/api/health").json()["queued"] == 0)
        assert state(client, waiting[1].json()["job_id"])["status"] in ("running", "done")


def test_cancel_stops_the_work_on_the_server():
    models, limits = make_client({"m": tiny_pipeline(3)})
    gated = Gated(models, pause_at=3)
    with TestClient(create_app(models, limits)) as client:
        job = client.post("/api/generate", json={"steps": 50, "wait": False}).json()
        assert gated.reached.wait(20)
        assert client.post(f"/api/jobs/{job['job_id']}/cancel").json()["status"] == "cancelled"
        gated.resume.set()
        wait_until(lambda: client.get("/api/health").json()["running"] == 0)
        assert max(gated.steps) == 3  # the pipeline stopped at the step it was cancelled in, not at 50
        s = state(client, job["job_id"])
        assert s["status"] == "cancelled" and s["step"] < 50
        assert client.get(f"/api/jobs/{job['job_id']}/samples.npz").status_code == 409
        assert client.post("/api/generate", json={"steps": 2}).status_code == 200  # the worker is free again


class Flaky(nn.Module):
    """Fails on label 2 (a bug) and claims to be out of memory above 3 rows."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x, t, y=None, **kw):
        if y is not None and bool((y == 2).any()):
            raise RuntimeError("boom")
        if x.shape[0] > 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.inner(x, t, y=y, **kw)


def test_a_failed_generation_fails_that_request_alone():
    pipe = tiny_pipeline(3)
    pipe.model = Flaky(pipe.model)
    models, limits = make_client({"m": pipe})
    gated = Gated(models)
    with TestClient(create_app(models, limits)) as client:
        r = client.post("/api/generate", json={"class": 2, "steps": 2})
        assert r.status_code == 500 and "generation failed (RuntimeError: boom)" in r.json()["error"]
        assert r.json()["status"] == "failed"
        r = client.post("/api/generate", json={"class": 0, "num": 4, "steps": 2})
        assert r.status_code == 503 and "out of memory" in r.json()["error"] and "fewer images" in r.json()["error"]
        assert client.post("/api/generate", json={"class": 0, "steps": 2}).status_code == 200
        # two requests batched into 4 rows run out of memory together: each is retried alone and succeeds
        gated.gate.clear()
        hold = client.post("/api/generate", json={"class": 1, "steps": 2, "wait": False}).json()
        wait_until(lambda: state(client, hold["job_id"])["status"] == "running")
        pair = [client.post("/api/generate", json={"class": k, "num": 2, "steps": 3}).json()["job_id"] for k in (0, 1)]
        gated.gate.set()
        wait_until(lambda: all(state(client, j)["status"] in ("done", "failed") for j in pair))
        assert [state(client, j)["status"] for j in pair] == ["done", "done"]
        assert [state(client, j)["batch_size"] for j in pair] == [4, 4]
        # a request that breaks the model, batched with a sound one: it fails alone, the other gets its images
        gated.gate.clear()
        hold = client.post("/api/generate", json={"class": 1, "steps": 2, "wait": False}).json()
        wait_until(lambda: state(client, hold["job_id"])["status"] == "running")
        pair = [client.post("/api/generate", json={"class": k, "steps": 3}).json()["job_id"] for k in (2, 0)]
        gated.gate.set()
        wait_until(lambda: all(state(client, j)["status"] in ("done", "failed") for j in pair))
        assert [state(client, j)["status"] for j in pair] == ["failed", "done"]
        assert "boom" in state(client, pair[0])["error"]
        # a failed job polled later keeps its 5xx
        gated.gate.clear()
        hold = client.post("/api/generate", json={"class": 1, "steps": 2, "wait": False}).json()
        wait_until(lambda: state(client, hold["job_id"])["status"] == "running")
        bad = client.post("/api/generate", json={"class": 2, "steps": 2}).json()["job_id"]
        gated.gate.set()
        wait_until(lambda: client.get(f"/api/jobs/{bad}").status_code == 500)
        assert client.get("/api/health").json()["ok"]


def test_progress_stream_reports_steps_previews_and_the_end():
    pipe = tiny_pipeline(3)
    models, limits = make_client({"m": pipe}, preview_every=2)
    Gated(models, step_delay=0.03)
    with TestClient(create_app(models, limits)) as client:
        job = client.post("/api/generate", json={"class": 1, "num": 2, "steps": 12, "seed": 3, "wait": False}).json()
        events = []
        with client.stream("GET", job["events"]) as stream:
            kind = None
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    events.append((kind, json.loads(line[6:])))
                    if kind == "end":
                        break
    kinds = [k for k, _ in events]
    assert kinds[-1] == "end" and events[-1][1]["status"] == "done" and set(kinds[:-1]) == {"progress"}
    steps = [e["step"] for k, e in events if k == "progress"]
    assert steps == sorted(steps) and len(set(steps)) >= 3
    previews = [e for _, e in events if "preview" in e]
    assert previews and all(e["preview_step"] % 2 == 0 for e in previews)
    image = np.asarray(Image.open(io.BytesIO(base64.b64decode(previews[-1]["preview"]))))
    assert image.shape == (8 + 2, 2 * 8 + 3)  # the job's two x0 predictions side by side (1 px borders)


@pytest.mark.parametrize("concurrency", [2])
def test_concurrent_generations(concurrency):
    models, limits = make_client({"m": tiny_pipeline(3)}, concurrency=concurrency)
    gated = Gated(models, pause_at=2)
    with TestClient(create_app(models, limits)) as client:
        a = client.post("/api/generate", json={"steps": 4, "wait": False}).json()
        b = client.post("/api/generate", json={"steps": 5, "wait": False}).json()  # another batch key
        wait_until(lambda: client.get("/api/health").json()["running"] == 2)  # both run at once
        gated.resume.set()
        wait_until(lambda: all(state(client, j["job_id"])["status"] == "done" for j in (a, b)))


def test_a_queued_jobs_stream_follows_its_place_in_the_queue():
    models, limits = make_client({"m": tiny_pipeline(3)})
    gated = Gated(models, step_delay=0.1)
    with TestClient(create_app(models, limits)) as client:
        gated.gate.clear()
        first = client.post("/api/generate", json={"steps": 2, "wait": False}).json()
        wait_until(lambda: state(client, first["job_id"])["status"] == "running")
        client.post("/api/generate", json={"steps": 3, "wait": False})  # another batch key: runs on its own
        last = client.post("/api/generate", json={"steps": 4, "wait": False}).json()
        seen = []
        with client.stream("GET", last["events"]) as stream:
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    event = json.loads(line[6:])
                    seen.append((event["status"], event["position"]))
                    if len(seen) == 1:
                        gated.gate.set()  # let the queue move once we listen
                    if event["status"] == "done":
                        break
    queued = [p for s, p in seen if s == "queued"]
    assert queued[0] == 1 and 0 in queued and seen[-1] == ("done", 0)
