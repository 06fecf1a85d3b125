"""The FastAPI app: one static page and the HTTP API over the scheduler (docs/serve.md).

Every error is JSON ``{"error": "what is wrong: how to fix it", "field": name or null, "code": status}``;
the page shows it beside the field. A bad request never reaches a worker, and a failed generation is
answered with a 5xx for the requests of that batch only.
"""
from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from ditlab.serve.encode import b64, npz_bytes, png_bytes, preview_png, still, video_bytes
from ditlab.serve.guards import OriginGuard
from ditlab.serve.jobs import Job, QueueFull, Scheduler
from ditlab.serve.models import ServedModels
from ditlab.serve.requests import ApiError, Limits, check_request
from ditlab.serve.validation import REQUEST_BODY, BodyLimit, parse_request, validation_error

STATIC = Path(__file__).parent / "static"
KEEPALIVE_S = 15.0
EVENT_INTERVAL_S = 0.05  # at most ~20 progress events a second per stream


def _fastapi(**kwargs: Any) -> FastAPI:
    """FastAPI whose /docs and /redoc work offline where ``fastapi-offline`` is installed (its assets are
    local); plain FastAPI (assets from a CDN) otherwise."""
    try:
        from fastapi_offline import FastAPIOffline
    except ImportError:
        return FastAPI(**kwargs)
    return FastAPIOffline(**kwargs)


def _error(err: ApiError, **extra: Any) -> JSONResponse:
    return JSONResponse({**err.to_dict(), **extra}, status_code=err.status)


def _job_files(job: Job, kind: str, make) -> Any:
    """A job's encoded files, made once (under a lock: two requests must not encode twice)."""
    result = job.result
    with _FILES_LOCK:
        if kind not in result.files:
            result.files[kind] = make(result)
        return result.files[kind]


_FILES_LOCK = threading.Lock()


def result_body(job: Job) -> dict[str, Any]:
    """The JSON of a finished job: base64 PNGs (video: film strips, plus base64 GIFs) and the settings."""
    base = f"/api/jobs/{job.id}"
    pngs = _job_files(job, "png", lambda r: [png_bytes(still(img)) for img in r.images])
    body: dict[str, Any] = {
        **job.state(), "images": [b64(p) for p in pngs], "descriptions": job.result.descriptions,
        "labels": job.result.labels, "prompts": job.result.prompts,
        "downloads": {"png": [f"{base}/images/{i}.png" for i in range(len(pngs))], "npz": f"{base}/samples.npz"},
    }
    if job.plan.frames is not None:
        gifs = _job_files(job, "gif", lambda r: [video_bytes(v, job.plan.fps, ".gif") for v in r.images])
        body["videos"] = [b64(g) for g in gifs]
        body["downloads"]["gif"] = [f"{base}/videos/{i}.gif" for i in range(len(gifs))]
        body["downloads"]["mp4"] = [f"{base}/videos/{i}.mp4" for i in range(len(gifs))]
    return body


def create_app(models: ServedModels, limits: Limits | None = None,
               allowed_hosts: Sequence[str] | None = None) -> FastAPI:
    """The web app serving ``models`` (``ditlab serve`` runs it with uvicorn).

    Args:
        allowed_hosts: host names requests may be addressed to (None: any; ``ditlab serve`` on loopback passes
            the loopback names, against DNS rebinding). POSTs from other web pages are refused either way.
    """
    limits = limits or Limits()
    scheduler = Scheduler(models.run_batch, limits, preview_png)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        scheduler.shutdown()

    app = _fastapi(title="ditlab serve", version="1", lifespan=lifespan,
                   description="Generate images with Diffusion Transformers: see docs/serve.md.")
    app.state.scheduler = scheduler
    app.state.models = models
    app.add_middleware(BodyLimit)
    app.add_middleware(OriginGuard, allowed_hosts=allowed_hosts)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError) -> JSONResponse:
        return _error(err)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        return _error(validation_error(err))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        fix = {404: "see GET /api/models and docs/serve.md for the API", 405: "check the method (GET or POST)"}
        message = f"{err.detail}: {fix.get(err.status_code, 'see docs/serve.md')}"
        return _error(ApiError(err.status_code, message))

    def get_job(job_id: str) -> Job:
        job = scheduler.get(job_id)
        if job is None:
            raise ApiError(404, f"no job {job_id!r}: it never existed or its result was dropped (the server keeps "
                                f"the last {limits.keep_jobs} results); submit it again", "job_id")
        return job

    def finished_job(job_id: str) -> Job:
        job = get_job(job_id)
        if job.status != "done":
            raise ApiError(409, f"job {job_id} is {job.status}, it has no images: wait for status done", "job_id")
        return job

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/models", summary="The served models and what each takes")
    async def list_models() -> dict[str, Any]:
        return {"models": models.public(), "limits": limits.to_dict()}

    @app.get("/api/health", summary="Liveness and queue state")
    async def health() -> dict[str, Any]:
        return {"ok": True, **scheduler.stats()}

    @app.post("/api/generate", summary="Generate images", openapi_extra=REQUEST_BODY,
              responses={202: {"description": "queued: poll GET /api/jobs/{job_id} or stream its events"},
                         400: {"description": "malformed JSON"},
                         422: {"description": "a value the model or the limits do not allow"},
                         429: {"description": "the queue is full"}, 500: {"description": "generation failed"}})
    async def generate(request: Request) -> Response:
        """The body is read as JSON whatever its Content-Type says (``curl -d`` works)."""
        req = parse_request(await request.body())
        plan = check_request(req, models.infos, limits, accepts_frames=models.accepts_frames)
        models.check_steps(plan)
        try:
            job, starts_now = scheduler.submit(plan)
        except QueueFull as err:
            return _error(ApiError(429, f"the server is busy ({err}, at most {limits.queue_size}): retry in a "
                                        "few seconds"))
        if not (req.wait and starts_now):
            return JSONResponse(
                {"job_id": job.id, "status": job.status, "position": scheduler.position(job),
                 "result": f"/api/jobs/{job.id}", "events": f"/api/jobs/{job.id}/events"}, status_code=202)
        await _wait(job, request)
        return await job_response(job)

    async def _wait(job: Job, request: Request) -> None:
        """Until the job ends; a client that hangs up cancels it."""
        event = job.subscribe()
        try:
            while not job.done:
                event.clear()
                if job.done:
                    break
                try:
                    await asyncio.wait_for(event.wait(), 1.0)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        scheduler.cancel(job)
        finally:
            job.unsubscribe(event)

    async def job_response(job: Job) -> Response:
        if job.status == "done":
            return JSONResponse(await run_in_threadpool(result_body, job))
        if job.status == "failed":
            return _error(job.error, job_id=job.id, status=job.status)
        if job.status == "cancelled":
            return _error(ApiError(409, "the job was cancelled: submit it again to generate"), job_id=job.id,
                          status=job.status)
        return JSONResponse({**job.state(), "position": scheduler.position(job)})

    @app.get("/api/jobs/{job_id}", summary="A job's state, and its images once done (errors keep their code)")
    async def job_state(job_id: str) -> Response:
        job = get_job(job_id)
        if job.status == "cancelled":
            return JSONResponse(job.state())
        return await job_response(job)

    @app.post("/api/jobs/{job_id}/cancel", summary="Cancel a queued or running job")
    async def cancel(job_id: str) -> dict[str, Any]:
        job = get_job(job_id)
        scheduler.cancel(job)
        return job.state()

    @app.get("/api/jobs/{job_id}/events", summary="Server-sent events: progress, live previews, the end",
             response_class=StreamingResponse)
    async def events(job_id: str, request: Request) -> StreamingResponse:
        job = get_job(job_id)
        return StreamingResponse(_stream(job, request), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def _stream(job: Job, request: Request) -> AsyncIterator[str]:
        event = job.subscribe()
        seen, preview_sent, position, quiet = -1, 0, -1, 0.0
        try:
            while True:
                event.clear()
                ahead = scheduler.position(job) if job.status == "queued" else 0
                if job.version != seen or ahead != position:  # a change, or the queue moved on
                    seen, position, quiet = job.version, ahead, 0.0
                    payload = {**job.state(), "position": ahead}
                    if job.preview is not None and job.preview_step != preview_sent and not job.done:
                        preview_sent = job.preview_step
                        payload.update(preview=b64(job.preview), preview_step=preview_sent)
                    yield f"event: {'end' if job.done else 'progress'}\ndata: {json.dumps(payload)}\n\n"
                    if job.done:
                        return
                    await asyncio.sleep(EVENT_INTERVAL_S)
                    continue
                try:
                    await asyncio.wait_for(event.wait(), 1.0)
                except asyncio.TimeoutError:
                    quiet += 1.0
                    if await request.is_disconnected():
                        return
                    if quiet >= KEEPALIVE_S:
                        quiet = 0.0
                        yield ": keep-alive\n\n"
        finally:
            job.unsubscribe(event)

    @app.get("/api/jobs/{job_id}/images/{index}.png", summary="One image as PNG (video: its frames in a row)",
             response_class=Response)
    async def image_png(job_id: str, index: int) -> Response:
        job = finished_job(job_id)
        pngs = await run_in_threadpool(_job_files, job, "png",
                                       lambda r: [png_bytes(still(img)) for img in r.images])
        if not 0 <= index < len(pngs):
            raise ApiError(404, f"image {index} does not exist: job {job_id} has images 0..{len(pngs) - 1}", "index")
        return Response(pngs[index], media_type="image/png",
                        headers={"Content-Disposition": f'attachment; filename="{job_id}_{index}.png"'})

    @app.get("/api/jobs/{job_id}/videos/{index}.{ext}", summary="One video as GIF or MP4 (video models)",
             response_class=Response)
    async def video_file(job_id: str, index: int, ext: Literal["gif", "mp4"]) -> Response:
        job = finished_job(job_id)
        if job.plan.frames is None:
            raise ApiError(404, f"job {job_id} made images, not videos: download /api/jobs/{job_id}/images/{index}.png",
                           "index")
        if not 0 <= index < len(job.result.images):
            raise ApiError(404, f"video {index} does not exist: job {job_id} has videos 0.."
                                f"{len(job.result.images) - 1}", "index")
        data = await run_in_threadpool(_job_files, job, f"{ext}{index}",
                                       lambda r: video_bytes(r.images[index], job.plan.fps, f".{ext}"))
        return Response(data, media_type="image/gif" if ext == "gif" else "video/mp4",
                        headers={"Content-Disposition": f'attachment; filename="{job_id}_{index}.{ext}"'})

    @app.get("/api/jobs/{job_id}/samples.npz", summary="The whole set as an ADM .npz (arr_0, labels, prompts)",
             response_class=Response)
    async def samples_npz(job_id: str) -> Response:
        job = finished_job(job_id)
        data = await run_in_threadpool(_job_files, job, "npz",
                                       lambda r: npz_bytes(r.images, r.labels, r.prompts))
        return Response(data, media_type="application/octet-stream",
                        headers={"Content-Disposition": f'attachment; filename="{job_id}.npz"'})

    return app
