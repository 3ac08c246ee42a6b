"""The app: the routers of :mod:`autoseg.server.routes` over one :class:`~autoseg.server.context.ServerState`,
behind the body-size limit and (but ``/healthz``) the bearer token; and :func:`serve`, which runs it."""

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

from autoseg import __version__
from autoseg.errors import require_extra
from autoseg.server.admission import Slot
from autoseg.server.options import ServeOptions
from autoseg.server.store import UploadStore
from autoseg.workflow.serving import ServedModel


def create_app(models: Sequence[ServedModel], options: ServeOptions = ServeOptions(), studies=None):
    """The ASGI app serving ``models`` (see :mod:`autoseg.server`); run it with uvicorn (:func:`serve`), or call it
    in-process with FastAPI's TestClient (``with TestClient(app)``: the spool folder lives as long as the block).

    Parameters
    ----------
    studies
        A DICOMweb datastore (:class:`~autoseg.server.dicomweb.DicomWebStudies`): ``GET /datastore/`` lists its
        image series and ``/infer?image=SERIES_UID`` segments one, storing the DICOM-SEG back; ``None``: uploads
        only.
    """
    fastapi = require_extra("fastapi", "serve", "autoseg serve")
    require_extra("python_multipart", "serve", "autoseg serve")  # FastAPI's form parser
    from contextlib import asynccontextmanager

    from fastapi import Depends

    from autoseg.server.context import ServerState, authorised
    from autoseg.server.routes import datastore, health, infer, info, v1

    state = ServerState({m.name: Slot(m, options.queue) for m in models}, options, studies=studies)

    @asynccontextmanager
    async def lifespan(app):
        folder = Path(tempfile.mkdtemp(prefix="autoseg-serve-"))
        (folder / "store").mkdir()
        state.folder, state.store = folder, UploadStore(folder / "store", options.max_stored)
        logging.getLogger("uvicorn.error").info("uploads are spooled in %s (removed at shutdown)", folder)
        try:
            yield
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    app = fastapi.FastAPI(title="autoseg", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                          openapi_url=None)
    app.state.autoseg = state
    app.middleware("http")(_bounded_body(options.max_upload_mb))
    app.include_router(health.router)
    for family in (v1, info, datastore, infer):
        app.include_router(family.router, dependencies=[Depends(authorised)])
    return app


def _bounded_body(max_upload_mb: float):
    """Middleware answering 413 to a body over ``max_upload_mb``: before reading it when its Content-Length says
    so, else as soon as the bytes received pass the limit (a chunked upload)."""
    from fastapi.responses import JSONResponse

    limit = int(max_upload_mb * 1e6)
    too_large = {"detail": f"request body over the {max_upload_mb:g} MB limit"}

    async def bounded_body(request, call_next):
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return JSONResponse(too_large, 413)
        seen, over = 0, False
        receive = request._receive

        async def counted():
            nonlocal seen, over
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                over = True
                return {"type": "http.disconnect"}  # the form parser stops here; answered 413 below
            return message

        request._receive = counted
        response = await call_next(request)
        return JSONResponse(too_large, 413) if over else response

    return bounded_body


def serve(models: Sequence[ServedModel], host: str = "127.0.0.1", port: int = 8000,
          options: ServeOptions = ServeOptions(), log_level: str = "info", studies=None) -> None:
    """Run the server until SIGINT/SIGTERM (requests in flight are finished first); ``studies`` as
    :func:`create_app` takes it."""
    uvicorn = require_extra("uvicorn", "serve", "autoseg serve")
    app = create_app(models, options, studies)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=None,
                limit_concurrency=None, access_log=True)
