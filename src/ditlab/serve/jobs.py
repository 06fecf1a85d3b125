"""Jobs and the scheduler: a bounded queue, N worker threads, same-settings requests run as one batch.

A ``Job`` is one request: its ``Plan``, its state (queued, running, done, failed, cancelled), the step
reached, the latest x0 preview, and the result or the error. Worker threads take the oldest queued job
and every queued job with the same ``Plan.batch_key`` (model, steps, guidance, sampler...) up to
``Limits.max_batch`` images, and run them as one ``Pipeline`` call: per-request conditions are stacked
and sample i of a request keeps its noise seed ``seed + i`` through ``indices``, so a batched request
gets exactly the images it would get alone. The pipeline's step callback reports progress, decodes a
preview every few steps, and cancels the batch once every job in it is cancelled (a job cancelled while
others of its batch go on is answered at once and its images are dropped). A batch of several requests that
fails (out of memory, or a value of one request the model chokes on) is run again one request at a time, so
a failure is answered to the request that causes it alone.

Listeners (the HTTP layer's asyncio tasks) subscribe to a job and are woken through their event loop.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import threading
import time
import traceback
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ditlab.errors import UserError
from ditlab.serve.requests import ApiError, Limits, Plan

log = logging.getLogger("ditlab.serve")

FINISHED = ("done", "failed", "cancelled")


class QueueFull(Exception):
    """The bounded queue holds ``Limits.queue_size`` waiting jobs already."""


@dataclass
class Result:
    """Images of a finished job, with what describes them."""

    images: np.ndarray  # uint8 (N, H, W, C) or video (N, F, H, W, C)
    descriptions: list[str]
    labels: list[int] | None
    prompts: list[str] | None
    seconds: float
    files: dict[str, Any] = field(default_factory=dict, repr=False)  # encoded files, made once when first asked


class Job:
    """One request's work and what its listeners see."""

    def __init__(self, plan: Plan):
        self.id = secrets.token_hex(8)
        self.plan = plan
        self.status = "queued"
        self.step = 0
        self.total = plan.steps
        self.batch_size = plan.num  # images in the batch the job runs in (>= num when batched)
        self.preview: bytes | None = None  # PNG of the current x0 prediction
        self.preview_step = 0
        self.result: Result | None = None
        self.error: ApiError | None = None
        self.created = time.time()
        self.started: float | None = None
        self.finished: float | None = None
        self.cancel_requested = False
        self.version = 0  # bumped at every change; listeners compare it
        self._lock = threading.Lock()
        self._listeners: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    # ------------------------------------------------------------------ listeners
    def subscribe(self) -> asyncio.Event:
        """An event set (in the calling task's loop) whenever the job changes."""
        event = asyncio.Event()
        with self._lock:
            self._listeners.append((asyncio.get_running_loop(), event))
        return event

    def unsubscribe(self, event: asyncio.Event) -> None:
        with self._lock:
            self._listeners = [(loop, e) for loop, e in self._listeners if e is not event]

    @property
    def watched(self) -> bool:
        return bool(self._listeners)

    def update(self, **changes: Any) -> None:
        """Change fields (from any thread) and wake every listener."""
        with self._lock:
            for key, value in changes.items():
                setattr(self, key, value)
            self.version += 1
            listeners = list(self._listeners)
        for loop, event in listeners:
            with contextlib.suppress(RuntimeError):  # a closed loop: the listener is gone
                loop.call_soon_threadsafe(event.set)

    @property
    def done(self) -> bool:
        return self.status in FINISHED

    def state(self) -> dict[str, Any]:
        """Progress as the API reports it (no images)."""
        return {"job_id": self.id, "status": self.status, "step": self.step, "total": self.total,
                "batch_size": self.batch_size, "settings": self.plan.settings(),
                "error": self.error.to_dict() if self.error else None,
                "seconds": round((self.finished or time.time()) - (self.started or self.created), 3)
                if self.started else None}


def is_out_of_memory(err: BaseException) -> bool:
    """CUDA/MPS out-of-memory errors and host MemoryError."""
    import torch

    if isinstance(err, (MemoryError, getattr(torch, "OutOfMemoryError", MemoryError))):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


class Scheduler:
    """Runs jobs on ``limits.concurrency`` threads with a bounded queue.

    Args:
        run_batch: ``run_batch(jobs, on_step)`` generates the jobs' images as one batch and returns one
            ``Result`` per job; ``on_step(step, total, decode)`` is called after every solver step and returns
            True to cancel (``decode()`` gives the batch's current x0 prediction as uint8 images).
        limits: queue size, concurrency, batch size, preview interval, finished jobs kept.
        make_preview: uint8 images of one job -> PNG bytes.
    """

    def __init__(self, run_batch: Callable[[list[Job], Callable], list[Result]], limits: Limits,
                 make_preview: Callable[[np.ndarray], bytes]):
        self.run_batch = run_batch
        self.limits = limits
        self.make_preview = make_preview
        self._queue: deque[Job] = deque()
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._cond = threading.Condition()
        self._running = 0
        self._stop = False
        self.batches_run = 0
        self._threads = [threading.Thread(target=self._worker, name=f"ditlab-serve-{i}", daemon=True)
                         for i in range(limits.concurrency)]
        for t in self._threads:
            t.start()

    # ------------------------------------------------------------------ the API side
    def submit(self, plan: Plan) -> tuple[Job, bool]:
        """Queue a job; returns it and whether it starts at once (no job waits before it and a worker is free).
        Raises ``QueueFull`` when ``limits.queue_size`` jobs wait already."""
        job = Job(plan)
        with self._cond:
            if len(self._queue) >= self.limits.queue_size:
                raise QueueFull(f"{len(self._queue)} requests are waiting")
            starts_now = not self._queue and self._running < self.limits.concurrency
            self._queue.append(job)
            self._jobs[job.id] = job
            self._evict()
            self._cond.notify()
        return job, starts_now

    def get(self, job_id: str) -> Job | None:
        with self._cond:
            return self._jobs.get(job_id)

    def position(self, job: Job) -> int:
        """How many queued jobs are ahead of ``job`` (0 when it runs or is next)."""
        with self._cond:
            try:
                return self._queue.index(job)
            except ValueError:
                return 0

    def cancel(self, job: Job) -> None:
        """Cancel a queued job at once; a running one stops at its next step (its batch stops once all its jobs
        are cancelled)."""
        with self._cond:
            if job.done:
                return
            queued = job in self._queue
            if queued:
                self._queue.remove(job)
        job.update(cancel_requested=True)
        if queued or job.status == "running":
            job.update(status="cancelled", finished=time.time())
        if queued:
            with self._cond:
                moved = list(self._queue)
            for other in moved:
                other.update()

    def stats(self) -> dict[str, Any]:
        with self._cond:
            return {"queued": len(self._queue), "running": self._running, "jobs": len(self._jobs),
                    "batches_run": self.batches_run, **self.limits.to_dict()}

    def shutdown(self) -> None:
        """Stop the workers after their current batch; cancel what waits."""
        with self._cond:
            self._stop = True
            waiting = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for job in waiting:
            job.update(cancel_requested=True, status="cancelled", finished=time.time())

    def _evict(self) -> None:
        """Forget the oldest finished jobs beyond ``limits.keep_jobs`` (memory stays bounded)."""
        finished = [jid for jid, j in self._jobs.items() if j.done]
        for jid in finished[: max(0, len(finished) - self.limits.keep_jobs)]:
            del self._jobs[jid]

    # ------------------------------------------------------------------ the worker side
    def _take_batch(self) -> list[Job] | None:
        with self._cond:
            while not self._queue and not self._stop:
                self._cond.wait()
            if self._stop:
                return None
            first = self._queue.popleft()
            batch, size = [first], first.plan.num
            for job in list(self._queue):
                if job.plan.batch_key() == first.plan.batch_key() and size + job.plan.num <= self.limits.max_batch:
                    self._queue.remove(job)
                    batch.append(job)
                    size += job.plan.num
            self._running += 1
            moved = list(self._queue)
        now = time.time()
        for job in batch:
            job.update(status="running", started=now, batch_size=size)
        for job in moved:  # their place in the queue changed: wake their listeners
            job.update()
        return batch

    def _worker(self) -> None:
        while (batch := self._take_batch()) is not None:
            outcome = self._run(batch)
            with self._cond:  # free before answering: a request sent right after this one starts at once
                self._running -= 1
                self.batches_run += 1
            for job, changes in outcome:
                if not job.done:  # a job cancelled while its batch went on stays cancelled
                    job.update(**changes)
            with self._cond:
                self._evict()

    def _run(self, batch: list[Job]) -> list[tuple[Job, dict[str, Any]]]:
        """Run one batch; returns the final state of each job (applied by the worker)."""
        offsets = np.cumsum([0] + [j.plan.num for j in batch]).tolist()
        every = self.limits.preview_every or max(1, batch[0].plan.steps // 8)

        def on_step(step: int, total: int, decode: Callable[[], np.ndarray]) -> bool:
            live = [j for j in batch if not j.done]
            if step < total and step % every == 0 and any(j.watched for j in live):
                images = decode()
                for i, job in enumerate(batch):
                    if not job.done:
                        job.update(step=step, total=total, preview_step=step,
                                   preview=self.make_preview(images[offsets[i]:offsets[i + 1]]))
            else:
                for job in live:
                    job.update(step=step, total=total)
            return not live  # every job of the batch cancelled: stop

        try:
            results = self.run_batch(batch, on_step)
        except Exception as err:  # noqa: BLE001 - one failed batch must not take the server down
            return self._failed(batch, err)
        now = time.time()
        return [(job, {"status": "done", "result": result, "step": job.total, "finished": now})
                for job, result in zip(batch, results, strict=True)]

    def _failed(self, batch: list[Job], err: Exception) -> list[tuple[Job, dict[str, Any]]]:
        from ditlab.sampling import GenerationCancelled

        now = time.time()
        if isinstance(err, GenerationCancelled):
            return [(job, {"status": "cancelled", "finished": now}) for job in batch]
        if len(batch) > 1:  # out of memory, or one request's values broke the batch: each request alone
            log.warning("a batch of %d requests failed (%s: %s): running them one by one", len(batch),
                        type(err).__name__, err)
            if is_out_of_memory(err):
                _free_memory()
            return [change for job in batch if not job.done for change in self._run([job])]
        if isinstance(err, UserError):
            error = ApiError(422, str(err))
        elif is_out_of_memory(err):
            _free_memory()
            error = ApiError(503, f"out of memory generating {batch[0].plan.num} images of {batch[0].plan.steps} "
                                  "steps: ask for fewer images (num) and retry")
        else:
            log.error("generation failed: %s", "".join(traceback.format_exception(err)))
            error = ApiError(500, f"generation failed ({type(err).__name__}: {err}): the server log has the "
                                  "traceback; other requests are not affected")
        return [(job, {"status": "failed", "error": error, "finished": now}) for job in batch]


def _free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
