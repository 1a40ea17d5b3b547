"""``headstart serve``: a prediction service over a run folder or an export folder (FastAPI + uvicorn).

Why FastAPI + uvicorn rather than LitServe: the service needs request-level control that LitServe
hides (reading the body with a byte limit before any parsing, a JSON error per bad upload, several
``file`` fields in one request, an HTML page at ``/``), and FastAPI/Starlette + uvicorn are small,
maintained and already what the test client (``fastapi.testclient``) speaks. Dynamic batching,
LitServe's main feature, is a few lines here (:class:`Batcher`).

Endpoints::

    POST /predict?top_k=3   multipart with one or more ``file`` fields (images), or JSON {"text": "..."}
                            / {"text": ["...", ...]} for text runs -> {"predictions": [{"input", "prediction",
                            "probability", "top": [{"class", "probability"}, ...]}, ...]}
    GET  /health            {"status": "ok", "batches": N, "largest_batch": M, ...}
    GET  /metadata          classes, modality, backbone, image size, source, headstart version
    GET  /                  a minimal HTML page: pick an image, see the answer

Every bad input gets a 4xx and ``{"error": "..."}`` naming what was wrong and what to send instead:
415 for a body that is neither multipart nor JSON (or JSON to an image run), 413 for a request over
``max_request_bytes`` (checked while reading, before parsing) or an image over ``max_pixels``, 422
for a missing ``file`` field, a ``file`` field that is not an upload, an empty / truncated /
non-image upload, or bad JSON. An unexpected failure is a 500 with a JSON error; the server keeps
running.

Dynamic batching: concurrent requests are queued; one worker thread takes what is waiting (up to
``max_batch`` inputs, waiting at most ``max_wait_ms`` after the first) and predicts it as one batch.

Offline and training-free on the request path: an export folder is run by
:class:`~headstart.export.classifier.OnnxClassifier` (onnxruntime, numpy, Pillow; no torch); a run
folder by :func:`headstart.model.load` (torch + the backbone and head, no training loop, no
Lightning). ``tests/test_serve.py`` checks ``sys.modules`` in a fresh process.
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from starlette.requests import Request  # module level: FastAPI resolves the endpoints' annotations here

from .. import __version__
from ..errors import HeadstartError

MAX_REQUEST_BYTES = 20 * 1024 * 1024  #: a request body over this is refused with 413 (while it is read)
MAX_PIXELS = 40_000_000  #: an uploaded image declaring more pixels than this is refused with 413 (before decoding)
MAX_FILES = 64  #: most ``file`` fields in one request
MAX_BATCH = 32
MAX_WAIT_MS = 5.0


class Predictor:
    """What the service predicts with: ``proba(inputs) -> (n, K)``; inputs are RGB PIL images or texts."""

    def __init__(self, proba: Callable[[list], np.ndarray], classes: Sequence[str], modality: str, metadata: dict[str, Any]):
        self.proba, self.classes, self.modality, self.metadata = proba, list(classes), modality, metadata


def load_predictor(path: str | Path) -> Predictor:
    """A :class:`Predictor` for an export folder (``preprocessing.json``) or a run folder (``model.json``)."""
    path = Path(path)
    if (path / "preprocessing.json").is_file():
        from .classifier import OnnxClassifier

        clf = OnnxClassifier(path)
        meta = clf.meta
        inp = meta.get("input", {})
        backbone = meta.get("backbone", {})
        return Predictor(clf.predict_proba, clf.classes, "image", {
            "source": "export", "path": str(path), "precision": clf.precision,
            "backbone": backbone.get("id") if isinstance(backbone, dict) else backbone,
            "image_size": [inp.get("height"), inp.get("width")],
        })
    if (path / "model.json").is_file():
        return _run_predictor(path)
    if not path.exists():
        raise HeadstartError(f"{str(path)!r} does not exist. Give a run folder (written by 'headstart fit') or an export folder "
                             "(written by 'headstart export').")
    raise HeadstartError(f"{str(path)!r} is neither a run folder (no model.json) nor an export folder (no preprocessing.json). "
                         "Give the folder 'headstart fit' or 'headstart export' wrote.")


def _run_predictor(run: Path) -> Predictor:
    import torch

    from ..model import load

    model = load(run)
    spec = model.backbone.describe().get("spec", {})
    meta: dict[str, Any] = {"source": "run", "path": str(run), "precision": "fp32", "backbone": spec.get("name")}
    if model.modality == "text":
        meta["max_length"] = getattr(model.backbone.preprocessing, "max_length", None)
        return Predictor(lambda texts: model.predict_proba(list(texts)), model.classes, "text", meta)
    pre = model.backbone.preprocessing
    transform = pre.transform()
    meta["image_size"] = list(pre.input_size)
    lock = threading.Lock()  # one forward at a time (the batcher has one worker; this guards direct use too)

    def proba(images: list) -> np.ndarray:
        x = torch.stack([transform(im) for im in images])
        with lock, torch.inference_mode():
            return model.proba_from_features(model.backbone(x).float().numpy())

    return Predictor(proba, model.classes, "image", meta)


class Batcher:
    """Collects the inputs of concurrent requests into batches for one worker thread."""

    def __init__(self, fn: Callable[[list], np.ndarray], *, max_batch: int = MAX_BATCH, max_wait_ms: float = MAX_WAIT_MS):
        self.fn, self.max_batch, self.max_wait = fn, max_batch, max_wait_ms / 1000
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="headstart-serve")
        self.batches = 0
        self.largest = 0

    async def submit(self, items: list) -> np.ndarray:
        if self.task is None or self.task.done():  # started in the running loop on first use
            self.queue = asyncio.Queue()
            self.task = asyncio.get_running_loop().create_task(self._loop())
        fut = asyncio.get_running_loop().create_future()
        await self.queue.put((items, fut))
        return await fut

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            waiting = [await self.queue.get()]
            n = len(waiting[0][0])
            deadline = loop.time() + self.max_wait
            while n < self.max_batch:
                try:
                    nxt = await asyncio.wait_for(self.queue.get(), max(0.0, deadline - loop.time()))
                except asyncio.TimeoutError:
                    break
                waiting.append(nxt)
                n += len(nxt[0])
            items = [x for batch, _ in waiting for x in batch]
            try:
                out = await loop.run_in_executor(self.executor, self.fn, items)
            except Exception as e:  # noqa: BLE001 - handed to each waiting request, which answers 500
                for _, fut in waiting:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            self.batches += 1
            self.largest = max(self.largest, len(items))
            i = 0
            for batch, fut in waiting:
                if not fut.done():
                    fut.set_result(out[i : i + len(batch)])
                i += len(batch)


class BadInput(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def decode_image(name: str, data: bytes, *, max_pixels: int = MAX_PIXELS):
    """An RGB PIL image from uploaded bytes, or :class:`BadInput` saying what is wrong with them."""
    # data.images' own checks: size from the header before decoding, truncation, mode to RGB, EXIF
    from ..data.images import open_image
    from ..errors import DataError

    if not data:
        raise BadInput(422, f"upload {name!r} is empty (0 bytes); send the image file's content")
    try:
        return open_image(io.BytesIO(data), max_pixels=max_pixels, name=repr(name))
    except DataError as e:
        reason = str(e).removeprefix(f"cannot read image {name!r}: ")
        if "over the limit" in reason or "decompression bomb" in reason.lower():
            raise BadInput(413, f"upload {name!r}: {reason.split('; ')[0]}; send a smaller image (at most {max_pixels:,} pixels)") from None
        raise BadInput(422, f"upload {name!r} is not a usable image: {reason}") from None


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>headstart serve</title>
<style>body{font-family:sans-serif;max-width:40em;margin:2em auto}pre{background:#f4f4f4;padding:1em}</style></head>
<body><h1>headstart</h1><p id="about">__ABOUT__</p>
<form id="form"><input type="file" id="file" name="file" accept="image/*"> <button type="submit" id="send">Predict</button></form>
<h2>Answer</h2><p id="answer">(no image yet)</p><pre id="raw"></pre>
<script>
document.getElementById("form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const f = document.getElementById("file").files[0];
  if (!f) { document.getElementById("answer").textContent = "Choose an image first."; return; }
  const body = new FormData(); body.append("file", f);
  const r = await fetch("predict?top_k=3", {method: "POST", body});
  const j = await r.json();
  document.getElementById("raw").textContent = JSON.stringify(j, null, 2);
  document.getElementById("answer").textContent = r.ok
    ? j.predictions[0].prediction + " (" + (100 * j.predictions[0].probability).toFixed(1) + "%)"
    : "Error: " + j.error;
});
</script></body></html>
"""


def create_app(path: str | Path | Predictor, *, max_request_bytes: int = MAX_REQUEST_BYTES, max_pixels: int = MAX_PIXELS,
               max_batch: int = MAX_BATCH, max_wait_ms: float = MAX_WAIT_MS):
    """The FastAPI application serving ``path`` (a run or export folder, or a :class:`Predictor`)."""
    from fastapi import FastAPI
    from fastapi.responses import HTMLResponse, JSONResponse
    from starlette.datastructures import UploadFile

    for name, v in (("max_request_bytes", max_request_bytes), ("max_pixels", max_pixels), ("max_batch", max_batch)):
        if int(v) < 1:
            raise HeadstartError(f"The {name!r} parameter must be a positive integer; got {v!r}.")
    pred = path if isinstance(path, Predictor) else load_predictor(path)
    batcher = Batcher(pred.proba, max_batch=max_batch, max_wait_ms=max_wait_ms)
    app = FastAPI(title="headstart", version=__version__, docs_url=None, redoc_url=None)
    app.state.batcher, app.state.predictor = batcher, pred
    k_all = len(pred.classes)

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(Exception)
    async def _unexpected(request, exc):  # noqa: ANN001 - last resort: a JSON 500, the server keeps serving
        return error(500, f"internal error while predicting ({type(exc).__name__}: {exc}); the server is still running")

    @app.get("/health")
    async def health():
        return {"status": "ok", "batches": batcher.batches, "largest_batch": batcher.largest, "max_batch": max_batch}

    @app.get("/metadata")
    async def metadata():
        return {"classes": pred.classes, "modality": pred.modality, **pred.metadata, "headstart_version": __version__,
                "limits": {"max_request_bytes": max_request_bytes, "max_pixels": max_pixels, "max_files": MAX_FILES}}

    @app.get("/", response_class=HTMLResponse)
    async def page():
        import html

        about = f"{pred.modality} classifier over {k_all} classes: {', '.join(pred.classes)} ({pred.metadata.get('source')})"
        return PAGE.replace("__ABOUT__", html.escape(about))

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_request_bytes:
            raise BadInput(413, f"request body is {int(declared):,} bytes, over the limit of {max_request_bytes:,}; send smaller or fewer images")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_request_bytes:
                raise BadInput(413, f"request body is over the limit of {max_request_bytes:,} bytes; send smaller or fewer images")
        return bytes(body)

    async def inputs_of(request: Request) -> tuple[list[str], list]:
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        body = await read_body(request)
        if ctype == "multipart/form-data":
            if pred.modality == "text":
                raise BadInput(415, 'this service classifies texts; send JSON {"text": "..."} (or a list of texts), not a file upload')
            request._body = body  # the stream is consumed: Starlette's form parser reads the cached body
            try:
                form = await request.form(max_files=MAX_FILES, max_fields=MAX_FILES)
            except Exception as e:  # noqa: BLE001 - malformed multipart, too many parts
                raise BadInput(422, f"could not parse the multipart body ({e}); send multipart/form-data with one or more 'file' fields") from None
            uploads = form.getlist("file")
            if not uploads:
                got = sorted(set(form.keys()))
                raise BadInput(422, f"no 'file' field in the form (got fields {got}); send the image as a field named 'file'")
            names, images = [], []
            for i, up in enumerate(uploads):
                if not isinstance(up, UploadFile):
                    raise BadInput(422, f"field 'file' number {i + 1} is text, not an uploaded file; send the image bytes as a file part")
                name = up.filename or f"file{i + 1}"
                images.append(decode_image(name, await up.read(), max_pixels=max_pixels))
                names.append(name)
            return names, images
        if ctype == "application/json":
            if pred.modality != "text":
                raise BadInput(415, "this service classifies images; send multipart/form-data with the image in a field named 'file'")
            try:
                doc = json.loads(body.decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as e:
                raise BadInput(422, f"the body is not valid UTF-8 JSON ({e}); send {{\"text\": \"...\"}}") from None
            texts = doc.get("text") if isinstance(doc, dict) else None
            if isinstance(texts, str):
                texts = [texts]
            if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
                got = sorted(doc) if isinstance(doc, dict) else type(doc).__name__
                raise BadInput(422, f"expected {{\"text\": \"...\"}} or {{\"text\": [\"...\", ...]}} with non-empty strings; got {got}")
            if len(texts) > MAX_FILES:
                raise BadInput(413, f"{len(texts)} texts in one request, over the limit of {MAX_FILES}; split the request")
            return texts, texts
        want = 'JSON {"text": "..."}' if pred.modality == "text" else "multipart/form-data with the image in a field named 'file'"
        raise BadInput(415, f"unsupported content type {ctype or '(none)'!r}; send {want}")

    @app.post("/predict")
    async def predict(request: Request):
        raw_k = request.query_params.get("top_k", "3")
        if not raw_k.isdigit() or int(raw_k) < 1:
            return error(422, f"top_k must be a positive integer; got {raw_k!r}")
        k = min(int(raw_k), k_all)
        try:
            names, items = await inputs_of(request)
        except BadInput as e:
            return error(e.status, e.message)
        proba = await batcher.submit(items)
        out = []
        for name, row in zip(names, proba):
            order = np.argsort(-row, kind="stable")[:k]
            out.append({"input": name, "prediction": pred.classes[order[0]], "probability": float(row[order[0]]),
                        "top": [{"class": pred.classes[i], "probability": float(row[i])} for i in order]})
        return {"predictions": out}

    return app


def serve(path: str | Path, *, host: str = "127.0.0.1", port: int = 8000, max_request_bytes: int = MAX_REQUEST_BYTES,
          max_batch: int = MAX_BATCH, max_wait_ms: float = MAX_WAIT_MS) -> None:
    """Run the service for ``path`` with uvicorn until interrupted (``headstart serve``)."""
    import uvicorn

    if not 0 < int(port) < 65536:
        raise HeadstartError(f"The 'port' parameter must be between 1 and 65535; got {port!r}.")
    app = create_app(path, max_request_bytes=max_request_bytes, max_batch=max_batch, max_wait_ms=max_wait_ms)
    uvicorn.run(app, host=host, port=int(port), log_level="info")
