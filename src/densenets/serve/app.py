"""The routes: ``/v1/predict``, ``/v1/explain``, ``/v1/model``, ``/healthz``, ``/metrics`` and
the page at ``/``. FastAPI parses and validates every request; the answers come from
:class:`.model.ServedModel` through the one batching worker."""

import json
import os
import secrets
import signal
import time
from contextlib import asynccontextmanager
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import HTTPException, RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from .. import __version__
from .batching import Batcher, QueueFull
from .config import ServeConfig
from .decoding import Decoder
from .limits import BodyLimit, Refused, decode_upload
from .metrics import Metrics
from .model import ServedModel
from .page import INDEX, STATIC

ROUTES = ("/", "/healthz", "/metrics", "/v1/model", "/v1/predict", "/v1/explain", "/docs", "/openapi.json")


def create_app(config: ServeConfig, served: ServedModel) -> FastAPI:
    """The application serving ``served`` under ``config``'s limits (the batcher runs while it does)."""
    metrics = Metrics()
    batcher = Batcher(served.predict, config.max_batch, config.max_wait_ms / 1000, config.max_queue, metrics.batch,
                      config.batch_wait)  # fmt: skip
    decoder = Decoder()  # one thread decodes and preprocesses every upload (see .decoding)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        yield
        batcher.stop()  # after uvicorn has answered what was in flight
        decoder.stop()

    app = FastAPI(title="densenets serve", version=__version__, lifespan=lifespan,
                  description=f"{served.name} on {served.backend}, {served.precision_note}")  # fmt: skip
    app.state.batcher, app.state.metrics, app.state.decoder = batcher, metrics, decoder
    bearer = HTTPBearer(auto_error=False)

    def authorised(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
        if config.api_key is None:
            return
        given = credentials.credentials if credentials else ""
        if not secrets.compare_digest(given.encode(), config.api_key.encode()):
            raise Refused(401, "unauthorized", "missing or wrong API key (Authorization: Bearer ...)",
                          {"WWW-Authenticate": "Bearer"})  # fmt: skip

    guarded = [Depends(authorised)]

    @app.exception_handler(Refused)
    async def refused(request: Request, exc: Refused):
        metrics.error(exc.kind)
        return JSONResponse({"detail": exc.detail}, exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        metrics.error("invalid_request")
        return await request_validation_exception_handler(request, exc)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        metrics.error("body_too_large" if exc.status_code == 413 else f"http_{exc.status_code}")
        return await http_exception_handler(request, exc)

    @app.middleware("http")
    async def record(request: Request, call_next):
        start = time.perf_counter()
        path = request.url.path
        # A prediction on its way: the batcher may wait for its images (the adaptive rule).
        request.state.announced = request.method == "POST" and path == "/v1/predict"
        if request.state.announced:
            batcher.announce()
        try:
            response = await call_next(request)
        finally:
            if request.state.announced:  # never submitted: refused, undecodable, or the client left
                batcher.withdraw()
        route = path if path in ROUTES else "/static" if path.startswith("/static/") else "other"
        metrics.request(request.method, route, response.status_code, time.perf_counter() - start)
        return response

    app.add_middleware(
        BodyLimit, max_bytes=int(config.max_body_mb * 2**20), on_refuse=lambda: metrics.error("body_too_large")
    )
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization"])  # fmt: skip

    async def decoded(files: list[UploadFile]) -> list:
        if len(files) > config.max_files:
            raise Refused(413, "too_many_files", f"{len(files)} files; at most {config.max_files} (--max-files)")
        tensors = []
        for f in files:
            data = await f.read()
            tensors.append(await decoder.run(decode_upload, served.decode, f.filename, data, config.max_pixels))
        return tensors

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok", "queue_depth": batcher.depth, "arriving": batcher.arriving, "pid": os.getpid()}

    @app.get("/v1/model", dependencies=guarded)
    def model_info() -> dict:
        return describe(config, served)

    @app.post("/v1/predict", dependencies=guarded)
    async def predict(
        request: Request,
        file: Annotated[list[UploadFile], File(description="one or more images")],
        top_k: Annotated[int, Query(ge=1, le=config.max_top_k)] = 5,
    ) -> dict:
        tensors = await decoded(file)
        announced, request.state.announced = request.state.announced, False
        try:
            answers = await batcher.submit(tensors, announced)
        except QueueFull as exc:
            raise Refused(503, "queue_full", f"server busy: {exc}; retry later", {"Retry-After": "1"}) from None
        predictions = [{"filename": f.filename, **answer_json(a, top_k)} for f, a in zip(file, answers, strict=True)]
        return {"predictions": predictions, **header(served)}

    @app.post("/v1/explain", dependencies=guarded)
    async def explain(
        file: Annotated[UploadFile, File(description="one image")],
        class_name: Annotated[str | None, Form(alias="class", description="default: prediction or positives")] = None,
        method: Annotated[Literal["cam", "gradcam"], Form()] = "cam",
        top_k: Annotated[int | None, Form(ge=1, le=config.max_top_k)] = None,
    ) -> dict:
        if served.eager is None:
            raise Refused(400, "cannot_explain", f"heat maps need gradients; the {served.backend} backend has none: "
                          "serve the run folder or checkpoint with --backend torch to explain")  # fmt: skip
        if class_name is not None and class_name not in served.classes:
            raise Refused(400, "unknown_class", f"unknown class {class_name!r}; GET /v1/model lists the classes")
        (tensor,) = await decoded([file])

        def run():
            with batcher.model_lock:  # hooks on the module batches run: never at the same time
                return served.explain(tensor, method, class_name, top_k)

        return {"filename": file.filename, **await run_in_threadpool(run), **header(served)}

    @app.get("/metrics", dependencies=guarded, response_class=PlainTextResponse)
    def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(batcher.depth), media_type="text/plain; version=0.0.4")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(INDEX, media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def header(served: ServedModel) -> dict:
    return {"model": served.name, "backend": served.backend, "precision": served.precision}


def answer_json(answer: dict, top_k: int) -> dict:
    """predict's record as the API writes it: ``top_k`` labels, and a multi-label model's
    ``probabilities`` and ``positives``."""
    if "probabilities" in answer:
        ranked = sorted(answer["probabilities"].items(), key=lambda kv: -kv[1])[:top_k]
        top = [{"label": name, "probability": p} for name, p in ranked]
        return {"top_k": top, "probabilities": answer["probabilities"], "positives": answer["positives"]}
    top = [{"label": p["class"], "index": p["index"], "probability": p["probability"]} for p in answer["predictions"]]
    return {"top_k": top[:top_k]}


def describe(config: ServeConfig, served: ServedModel) -> dict:
    """``GET /v1/model``: what answers, on what, and within which limits."""
    from ..engine.prediction import multilabel_thresholds

    thresholds = multilabel_thresholds(served.loaded)
    preprocess = {k: served.loaded.preprocess.get(k) for k in ("mean", "std", "resize", "crop", "channels")}
    return {
        **header(served),
        "version": __version__,
        "weights": served.weights,
        "precision_note": served.precision_note,
        "classes": served.classes,
        "multilabel": thresholds is not None,
        "thresholds": dict(zip(served.classes, thresholds[0], strict=True)) if thresholds else None,
        "threshold_source": thresholds[1] if thresholds else None,
        "preprocessing": preprocess,
        "can_explain": served.eager is not None,
        "limits": {"max_files": config.max_files, "max_body_mb": config.max_body_mb, "max_pixels": config.max_pixels,
                   "max_batch": config.max_batch, "max_wait_ms": config.max_wait_ms, "max_queue": config.max_queue},
    }  # fmt: skip


CONFIG_ENV = "DENSENETS_SERVE_CONFIG"  # how ``serve --workers N`` hands its config to each worker process


def app_from_env() -> FastAPI:
    """The application of one worker process of ``serve --workers N`` (uvicorn's factory): the
    config its parent checked, from :data:`CONFIG_ENV`; the worker loads the model itself."""
    from .model import load_served

    fields = json.loads(os.environ[CONFIG_ENV])
    config = ServeConfig(**{**fields, "cors_origins": tuple(fields["cors_origins"])})
    return create_app(config, load_served(config))


def serve(config: ServeConfig) -> None:
    """Load, print one line saying what is served where, and answer until SIGINT/SIGTERM."""
    import uvicorn

    from .model import load_served

    config = config.checked()
    served = load_served(config)  # with --workers N too: a bad SOURCE fails here, once, before any worker starts
    for line in served.notes:
        print(line)
    auth = "API key required" if config.api_key else "no auth"
    processes = f"{config.workers} worker processes, each" if config.workers > 1 else "one process"
    print(f"serving {served.name} ({served.weights}) on {served.backend}, {served.precision_note}, "
          f"at http://{config.host}:{config.port} ({auth}; {processes} batching up to {config.max_batch} "
          f"within {config.max_wait_ms:g} ms, {config.batch_wait})", flush=True)  # fmt: skip
    options = {"host": config.host, "port": config.port, "log_level": "warning", "timeout_graceful_shutdown": 30}
    if config.workers > 1:
        # uvicorn's supervisor spawns the workers from an import string; each loads the model and runs
        # its own batcher. On SIGTERM it stops them (each drains what it has in flight) and returns.
        del served
        os.environ[CONFIG_ENV] = json.dumps(config.__dict__)
        uvicorn.run("densenets.serve.app:app_from_env", factory=True, workers=config.workers, **options)
        return
    # uvicorn drains in-flight requests on SIGTERM, then raises the signal again for the handler
    # it found: a no-op one makes a drained shutdown the clean exit (0) it is, not death by signal.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    uvicorn.run(create_app(config, served), **options)
