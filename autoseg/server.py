"""``autoseg serve``: trained models over HTTP, for 3D Slicer's MONAI Label extension and any other client.

Endpoints (the model in a URL is the dataset name; images travel as a multipart file field named ``file``):

* ``GET /healthz``: liveness and the models served (no token needed).
* ``POST /v1/segment/{model}``: NIfTI / NRRD / MHA (or a 2D image for a 2D model) in, the label map in the same
  format and geometry out, with the dataset's own label values.
* The MONAI Label subset the Slicer extension and ``MONAILabelClient`` use for automatic segmentation
  (``../shared/peers/MONAI_LABEL_API.md``): ``GET /info/``, ``POST /infer/{model}`` (file inline, or an image
  uploaded before by ``PUT /datastore/?image=ID`` or ``PUT /session/``), ``GET``/``DELETE /session/{id}``. The
  reply of ``/infer`` is MONAI Label's multipart form (``params`` with ``label_names``, then the label file) with a
  Content-Length, labels valued 1..N in ``label_names`` order. Training, active learning and auth endpoints are
  absent (404), which is how the extension learns that they are off.

Bounded work: each model runs one inference at a time; at most ``queue`` more wait, beyond that a request gets
503 with a ``Retry-After`` estimate (seconds until a place is expected to be free: the moving average of the
measured inference time times the inferences that must end first) and an ``Autoseg-Ticket``: sent back as the
``Autoseg-Ticket`` header of the retry, it keeps the client's place in line (requests are admitted in the order
they first asked; a ticket lapses when its holder is not back within a grace period after its Retry-After, and a
model with nothing to do takes the next request). ``GET /healthz`` reports each model's ``load`` (running, waiting,
tickets). Uploads over ``max_upload_mb`` get 413 before they are read; uploads are spooled
to a private temporary folder removed at shutdown (stored datastore/session images: the ``max_stored`` most
recent). A bad upload is a 4xx with a one-line ``detail``; the server keeps serving. Binds 127.0.0.1 unless
told otherwise; with a token, every endpoint but ``/healthz`` needs ``Authorization: Bearer <token>``. On SIGINT or
SIGTERM uvicorn stops accepting connections and finishes the requests in flight before exiting. Result file names
travel as RFC 6266 ``Content-Disposition`` (an ASCII ``filename`` plus ``filename*=UTF-8''...`` for any other
name).

FastAPI, uvicorn and python-multipart are the optional extra ``[serve]``, imported when the app is created.
"""

# no `from __future__ import annotations`: FastAPI reads the endpoint annotations at run time

import asyncio
import hmac
import json
import logging
import math
import re
import secrets
import shutil
import tempfile
import time
import unicodedata
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence
from urllib.parse import quote

from autoseg import __version__
from autoseg.errors import AutosegError, require_extra
from autoseg.workflow.serving import UPLOAD_ENDINGS, ServedModel, upload_ending

#: Endings a MONAI Label client may ask for in ``params.result_extension``.
RESULT_ENDINGS = (".nrrd", ".nii.gz", ".nii", ".mha")
#: Request/response header carrying a client's place in line (see :class:`_Turns`).
TICKET_HEADER = "Autoseg-Ticket"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ServeOptions:
    """Limits and access of a server.

    Attributes
    ----------
    queue
        Requests that may wait per model while one runs (beyond: 503).
    max_upload_mb
        Largest request body accepted, MB (beyond: 413).
    max_stored
        Images kept from ``PUT /datastore/`` and ``PUT /session/`` (least recently used dropped first).
    token
        Bearer token every endpoint but ``/healthz`` requires; ``None``: open (bind to localhost then).
    """

    queue: int = 4
    max_upload_mb: float = 1024.0
    max_stored: int = 32
    token: str | None = None


class _Store:
    """Uploaded images kept for later ``/infer`` calls, by id, on disk, least recently used dropped first."""

    def __init__(self, folder: Path, limit: int):
        self.folder, self.limit = folder, limit
        self.files: OrderedDict[str, Path] = OrderedDict()

    def put(self, key: str, src: Path) -> None:
        dest = self.folder / src.name  # a unique spooled name with its image ending
        shutil.move(str(src), dest)
        old = self.files.pop(key, None)
        if old is not None:
            old.unlink(missing_ok=True)
        self.files[key] = dest
        while len(self.files) > self.limit:
            _, path = self.files.popitem(last=False)
            path.unlink(missing_ok=True)

    def get(self, key: str) -> Path | None:
        path = self.files.get(key)
        if path is not None:
            self.files.move_to_end(key)
        return path


class _Turns:
    """Admission to one model's bounded line, in the order requests first asked (no clock or network: testable).

    The line has ``capacity`` places (the running inference and the ones waiting). A request is admitted when the
    places taken plus the tickets issued before its own are fewer than ``capacity``, or when the model has nothing
    to do. A request turned away gets a ticket (its place in line: a fresh request queues behind every live ticket,
    so a client that waited its Retry-After is not overtaken by newcomers) and a Retry-After: the inferences that
    must end before a place is free for it, times the moving average of the measured inference time, less what the
    running one has done already. A ticket lapses ``max(2 s, mean inference time)`` after the Retry-After given
    with it, so an absent client holds a place only that long.

    Parameters
    ----------
    capacity
        Places in line: 1 running + the requests that may wait.
    clock
        Seconds, monotonic (``time.monotonic``; a fake one in tests).
    max_tickets
        Live tickets at most; beyond, a 503 carries a Retry-After but no ticket.
    """

    #: Weight of the newest measurement in the moving average of inference time.
    ALPHA = 0.3
    #: Inference time assumed before the first one is measured, seconds.
    UNMEASURED = 10.0

    def __init__(self, capacity: int, clock: Callable[[], float] = time.monotonic, max_tickets: int = 64):
        self.capacity, self.clock, self.max_tickets = capacity, clock, max_tickets
        self.tickets: OrderedDict[str, float] = OrderedDict()  # ticket -> lapse time, in order of issue
        self.mean_seconds: float | None = None
        self.started: float | None = None  # clock time the running inference began

    def grace(self) -> float:
        return max(2.0, self.mean_seconds or 0.0)

    def retry_after(self, ahead: int) -> int:
        """Whole seconds until ``ahead`` inferences (the running one first) are expected to have ended, at least 1."""
        mean = self.mean_seconds if self.mean_seconds is not None else self.UNMEASURED
        done = 0.0 if self.started is None else min(self.clock() - self.started, mean)
        return max(1, math.ceil(ahead * mean - done))

    def admit(self, taken: int, ticket: str | None) -> tuple[bool, int, str | None]:
        """``(True, 0, None)``: the request takes a place now; else ``(False, Retry-After seconds, ticket)``.

        Parameters
        ----------
        taken
            Places taken now (running + waiting).
        ticket
            The ticket the client sent back (``None``, unknown or lapsed: a fresh request).
        """
        now = self.clock()
        for key in [k for k, lapse in self.tickets.items() if lapse < now]:
            del self.tickets[key]
        order = list(self.tickets)
        ahead = order.index(ticket) if ticket in self.tickets else len(order)
        if taken + ahead < self.capacity or taken == 0:
            self.tickets.pop(ticket, None)
            return True, 0, None
        if ticket not in self.tickets:
            if len(self.tickets) >= self.max_tickets:
                return False, self.retry_after(taken + ahead - self.capacity + 1), None
            ticket = secrets.token_urlsafe(16)
        retry = self.retry_after(taken + ahead - self.capacity + 1)
        self.tickets[ticket] = now + retry + self.grace()
        return False, retry, ticket

    def start(self) -> None:
        """An inference begins now."""
        self.started = self.clock()

    def finish(self) -> None:
        """The running inference ended now: its duration enters the moving average."""
        if self.started is None:
            return
        seconds, self.started = self.clock() - self.started, None
        self.mean_seconds = seconds if self.mean_seconds is None else \
            self.mean_seconds + self.ALPHA * (seconds - self.mean_seconds)


class _Slot:
    """One model's turn-taking: one inference runs, at most ``queue`` wait, admitted by :class:`_Turns`."""

    def __init__(self, model: ServedModel, queue: int):
        self.model, self.queue = model, queue
        self.lock = asyncio.Lock()
        self.waiting = 0
        self.turns = _Turns(queue + 1)

    def load(self) -> dict[str, int]:
        return {"running": int(self.lock.locked()), "waiting": self.waiting, "tickets": len(self.turns.tickets)}


def create_app(models: Sequence[ServedModel], options: ServeOptions = ServeOptions()):
    """The ASGI app serving ``models`` (see the module docs); run it with uvicorn (:func:`serve`)."""
    fastapi = require_extra("fastapi", "serve", "autoseg serve")
    require_extra("python_multipart", "serve", "autoseg serve")  # FastAPI's form parser
    from contextlib import asynccontextmanager

    from fastapi import Depends, File, Form, Header, HTTPException, Query, Request, UploadFile
    from fastapi.responses import FileResponse, JSONResponse, Response
    from starlette.concurrency import run_in_threadpool

    slots = {m.name: _Slot(m, options.queue) for m in models}
    state: dict = {}

    @asynccontextmanager
    async def lifespan(app):
        folder = Path(tempfile.mkdtemp(prefix="autoseg-serve-"))
        state["tmp"], state["store"] = folder, _Store(folder / "store", options.max_stored)
        (folder / "store").mkdir()
        logging.getLogger("uvicorn.error").info("uploads are spooled in %s (removed at shutdown)", folder)
        try:
            yield
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    app = fastapi.FastAPI(title="autoseg", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                          openapi_url=None)
    limit = int(options.max_upload_mb * 1e6)

    @app.middleware("http")
    async def bounded_body(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return JSONResponse({"detail": f"request body over the {options.max_upload_mb:g} MB limit"}, 413)
        seen, over = 0, False
        receive = request._receive

        async def counted():  # a body without Content-Length (chunked) is counted as it arrives
            nonlocal seen, over
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                over = True
                return {"type": "http.disconnect"}  # the form parser stops here; answered 413 below
            return message

        request._receive = counted
        response = await call_next(request)
        if over:
            return JSONResponse({"detail": f"request body over the {options.max_upload_mb:g} MB limit"}, 413)
        return response

    def authorised(request: Request) -> None:
        if options.token is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {options.token}".encode()):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    def slot(model: str) -> _Slot:
        if model not in slots:
            raise HTTPException(404, f"no model '{model}' (served: {', '.join(slots)})")
        return slots[model]

    async def spool(upload: UploadFile, what: str) -> Path:
        """The upload in a private temporary file with its real ending (the reader picks the format by it)."""
        head = await upload.read(512)
        ending = upload_ending(upload.filename, head)
        if ending is None:
            raise HTTPException(400, f"{what} '{upload.filename}': not a recognised image file (expected one of "
                                     f"NIfTI .nii/.nii.gz, .nrrd, .mha, or a 2D image)")
        path = state["tmp"] / f"{uuid.uuid4().hex}{ending}"
        with open(path, "wb") as f:
            f.write(head)
            while chunk := await upload.read(_CHUNK):
                f.write(chunk)
        return path

    async def run(s: _Slot, image: Path, out: Path, source_values: bool, name: str, ticket: str | None) -> None:
        """Segment ``image`` into ``out`` when the model's turn comes; 503 when its line is full."""
        admitted, retry, ticket = s.turns.admit(s.waiting + s.lock.locked(), ticket)
        if not admitted:
            headers = {"Retry-After": str(retry), **({TICKET_HEADER: ticket} if ticket else {})}
            raise HTTPException(503, f"model '{s.model.name}' is busy ({s.waiting} request(s) waiting); retry in "
                                     f"{retry} s" + (f" with header {TICKET_HEADER}: {ticket} to keep your place"
                                                     if ticket else ""), headers=headers)
        s.waiting += 1
        try:
            await s.lock.acquire()
        finally:
            s.waiting -= 1

        def release(_=None) -> None:
            s.turns.finish()
            s.lock.release()

        s.turns.start()
        task = asyncio.ensure_future(run_in_threadpool(s.model.segment, image, out, source_values))
        try:
            await asyncio.shield(task)  # a dropped client does not free the model while its thread still runs
        except AutosegError as e:
            raise HTTPException(400, str(e).splitlines()[0].replace(str(image), name)) from None
        finally:
            if task.done():
                release()
            else:
                task.add_done_callback(release)

    def remove(*paths: Path) -> None:
        for p in paths:
            Path(p).unlink(missing_ok=True)

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "version": __version__, "models": list(slots),
                "load": {name: s.load() for name, s in slots.items()}}

    @app.post("/v1/segment/{model}", dependencies=[Depends(authorised)])
    async def segment(model: str, file: UploadFile = File(...),
                      ticket: str | None = Header(None, alias=TICKET_HEADER)):
        s = slot(model)
        image = await spool(file, "upload")
        ending = "".join(image.suffixes[-2:]) if image.name.endswith(".nii.gz") else image.suffix
        ending = ".png" if ending in (".jpg", ".jpeg") else ending  # a label map is never stored lossy
        out = state["tmp"] / f"{uuid.uuid4().hex}-seg{ending}"
        try:
            await run(s, image, out, True, file.filename or "upload", ticket)
            data = out.read_bytes()
        finally:
            remove(image, out)
        return Response(data, media_type="application/octet-stream",
                        headers={"Content-Disposition": _disposition("attachment",
                                                                     f"{_stem(file.filename) or 'image'}_seg{ending}")})

    @app.get("/info/", dependencies=[Depends(authorised)])
    @app.get("/info", dependencies=[Depends(authorised)], include_in_schema=False)
    async def info():
        names: list[str] = []
        for s in slots.values():
            names += [n for n in s.model.label_names if n not in names]
        return {"name": "autoseg", "description": "autoseg models", "version": __version__, "labels": names,
                "models": {name: {"type": "segmentation", "labels": _label_dict(s.model), "dimension": s.model.dims,
                                  "description": s.model.description, "config": {}}
                           for name, s in slots.items()},
                "trainers": {}, "strategies": {}, "scoring": {}, "train_stats": {},
                "datastore": {"total": len(state["store"].files), "completed": 0}}

    @app.put("/datastore/", dependencies=[Depends(authorised)])
    @app.put("/datastore", dependencies=[Depends(authorised)], include_in_schema=False)
    async def datastore_put(image: str = Query(""), params: str = Form("{}"), file: UploadFile = File(...)):
        _params(params)
        key = image or _stem(file.filename) or uuid.uuid4().hex
        state["store"].put(key, await spool(file, "upload"))
        return {"image": key}

    @app.put("/session/", dependencies=[Depends(authorised)])
    @app.put("/session", dependencies=[Depends(authorised)], include_in_schema=False)
    async def session_put(files: list[UploadFile] = File(...), params: str = Form("{}"),
                          client_id: str = Form("")):
        _params(params)
        sid = str(uuid.uuid4())
        path = await spool(files[0], "upload")
        state["store"].put(f"session:{sid}", path)
        return {"session_id": sid, "session_info": {"name": files[0].filename, "image": sid}}

    @app.get("/session/{sid}", dependencies=[Depends(authorised)])
    async def session_get(sid: str):
        path = state["store"].get(f"session:{sid}")
        if path is None:
            raise HTTPException(404, f"no session '{sid}'")
        return {"session_id": sid, "image": sid, "size": path.stat().st_size}

    @app.delete("/session/{sid}", dependencies=[Depends(authorised)])
    async def session_delete(sid: str):
        path = state["store"].files.pop(f"session:{sid}", None)
        if path is None:
            raise HTTPException(404, f"no session '{sid}'")
        path.unlink(missing_ok=True)
        return {"session_id": sid}

    @app.post("/infer/{model}", dependencies=[Depends(authorised)])
    async def infer(model: str, image: str = Query(""), session_id: str = Query(""), output: str = Query(""),
                    params: str = Form("{}"), file: UploadFile | None = File(None),
                    ticket: str | None = Header(None, alias=TICKET_HEADER)):
        s = slot(model)
        if output not in ("", "all", "image", "json"):
            raise HTTPException(422, f"output '{output}': this server answers image, json or all")
        request_params = _params(params)
        ending = request_params.get("result_extension") or ".nii.gz"
        if ending not in RESULT_ENDINGS:
            raise HTTPException(400, f"result_extension '{ending}': expected one of {', '.join(RESULT_ENDINGS)}")
        if file is not None:
            source, owned = await spool(file, "upload"), True
        else:
            key = f"session:{session_id}" if session_id else image
            source, owned = (state["store"].get(key) if key else None), False
            if source is None:
                raise HTTPException(404, f"no uploaded image '{session_id or image}': send it as the file field, "
                                         f"or PUT /datastore/?image=ID first")
        stem = _stem(file.filename if file is not None else image) or "result"
        out = state["tmp"] / f"{uuid.uuid4().hex}{ending}"
        try:
            await run(s, source, out, False, (file.filename if file is not None else image) or "image", ticket)
            data = out.read_bytes()
        finally:
            remove(out, *([source] if owned else []))
        result = {"label_names": _label_dict(s.model), "latencies": {"infer": round(s.model.last_seconds, 3)},
                  "model": model}
        if output == "json":
            return result
        filename = f"{stem}_seg{ending}"
        if output == "image":
            return Response(data, media_type="application/octet-stream",
                            headers={"Content-Disposition": _disposition("attachment", filename)})
        boundary, part = secrets.token_hex(16), _disposition('form-data; name="image"', filename)
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"params\"\r\n"
                f"Content-Type: application/json\r\n\r\n{json.dumps(result)}\r\n"
                f"--{boundary}\r\nContent-Disposition: {part}\r\n"
                f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
        return Response(body, media_type=f"multipart/form-data; boundary={boundary}")

    return app


def _label_dict(model: ServedModel) -> dict[str, int]:
    """Label name -> consecutive value 1..N, as Slicer maps segment names."""
    return {name: k for k, name in enumerate(model.label_names, 1)}


def _stem(filename: str | None) -> str:
    """The last path component of a client's file name without its image ending."""
    name = (filename or "").replace("\\", "/").rsplit("/", 1)[-1]
    for ending in UPLOAD_ENDINGS:
        if name.lower().endswith(ending):
            return name[:-len(ending)]
    return name


def _safe(name: str) -> str:
    """An ASCII file name for a quoted ``filename=`` parameter: accents dropped, any other character ``_``."""
    kept = (c for c in unicodedata.normalize("NFKD", name) if not unicodedata.combining(c))
    return "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "_" for c in kept)[:100] or "result"


def _disposition(kind: str, filename: str) -> str:
    """A Content-Disposition value naming ``filename`` (RFC 6266): ``filename="..."`` when the name is plain ASCII,
    else that ASCII fallback for old readers plus ``filename*=UTF-8''<percent-encoded>`` (RFC 8187) carrying the
    name itself (a header is latin-1 at most, so a CJK or emoji name cannot go in as it is).

    Examples
    --------
    >>> print(_disposition("attachment", "case_001_seg.nii.gz"))
    attachment; filename="case_001_seg.nii.gz"
    >>> print(_disposition("attachment", "Crâne 海马_seg.nrrd"))
    attachment; filename="Crane____seg.nrrd"; filename*=UTF-8''Cr%C3%A2ne%20%E6%B5%B7%E9%A9%AC_seg.nrrd
    """
    name = "".join("_" if unicodedata.category(c)[0] == "C" else c for c in filename)  # no control characters
    fallback = _safe(name)
    if fallback == name:
        return f'{kind}; filename="{name}"'
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


def _params(text: str) -> dict:
    from fastapi import HTTPException

    try:
        params = json.loads(text or "{}")
    except ValueError:
        raise HTTPException(400, "params: not a JSON object") from None
    if not isinstance(params, dict):
        raise HTTPException(400, "params: not a JSON object")
    return params


def serve(models: Sequence[ServedModel], host: str = "127.0.0.1", port: int = 8000,
          options: ServeOptions = ServeOptions(), log_level: str = "info") -> None:
    """Run the server until SIGINT/SIGTERM (requests in flight are finished first)."""
    uvicorn = require_extra("uvicorn", "serve", "autoseg serve")
    app = create_app(models, options)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=None,
                limit_concurrency=None, access_log=True)
