"""What every endpoint is given: the server's state as a FastAPI dependency, the bearer-token check, the model a
URL names, and the steps the segmenting endpoints share (spooling an upload, waiting for the model's turn, a
private scratch folder).

Endpoints take the state through :func:`get_state` (``Depends``), so a test can build an app around stand-in
models and call each endpoint in-process with FastAPI's TestClient.
"""

# no `from __future__ import annotations`: FastAPI reads the dependency annotations at run time

import asyncio
import hmac
import json
import shutil
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

from fastapi import Depends, HTTPException, Request, UploadFile
from starlette.concurrency import run_in_threadpool

from autoseg.errors import AutosegError
from autoseg.server.admission import Slot
from autoseg.server.archive import is_zip
from autoseg.server.options import TICKET_HEADER, ServeOptions
from autoseg.server.store import UploadStore
from autoseg.workflow.serving import upload_ending

_CHUNK = 1 << 20


@dataclass
class ServerState:
    """One server's models and their lines, its options, and (once started) its spool folder and upload store.

    Attributes
    ----------
    slots
        Model name (the dataset's) -> its :class:`~autoseg.server.admission.Slot`.
    options
        Limits and access.
    folder
        Private temporary folder uploads are spooled to (made at startup, removed at shutdown).
    store
        Images kept for later ``/infer`` calls.
    studies
        The DICOMweb datastore (:class:`~autoseg.server.dicomweb.DicomWebStudies`), ``None`` without one.
    """

    slots: dict[str, Slot]
    options: ServeOptions
    folder: Optional[Path] = None
    store: Optional[UploadStore] = field(default=None)
    studies: Optional[object] = None


def get_state(request: Request) -> ServerState:
    """The state of the app serving ``request``."""
    return request.app.state.autoseg


def authorised(request: Request, state: ServerState = Depends(get_state)) -> None:
    """401 unless the request carries the server's bearer token (when it has one)."""
    if state.options.token is None:
        return
    given = request.headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {state.options.token}".encode()):
        raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})


def model_slot(model: str, state: ServerState = Depends(get_state)) -> Slot:
    """The line of the model the URL names; 404 for a model not served."""
    if model not in state.slots:
        raise HTTPException(404, f"no model '{model}' (served: {', '.join(state.slots)})")
    return state.slots[model]


def parse_params(text: str) -> dict:
    """A MONAI Label ``params`` form field: a JSON object, else 400."""
    try:
        params = json.loads(text or "{}")
    except ValueError:
        raise HTTPException(400, "params: not a JSON object") from None
    if not isinstance(params, dict):
        raise HTTPException(400, "params: not a JSON object")
    return params


def scratch(state: ServerState, ending: str) -> Path:
    """A fresh file name in the spool folder."""
    return state.folder / f"{uuid.uuid4().hex}{ending}"


@contextmanager
def scratch_folder(state: ServerState) -> Iterator[Path]:
    """A fresh folder in the spool folder, removed with everything in it when the block ends (errors too)."""
    folder = scratch(state, "")
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def spool(state: ServerState, upload: UploadFile, what: str = "upload", zipped: bool = False) -> Path:
    """The upload in a private temporary file with its real ending (the reader picks the format by it);
    ``zipped``: a zip (of a DICOM series) is accepted too, spooled as ``.zip``."""
    head = await upload.read(512)
    ending = ".zip" if zipped and is_zip(upload.filename, head) else upload_ending(upload.filename, head)
    if ending is None:
        raise HTTPException(400, f"{what} '{upload.filename}': not a recognised image file (expected one of "
                                 f"NIfTI .nii/.nii.gz, .nrrd, .mha, "
                                 f"{'a zip of one DICOM series, ' if zipped else ''}or a 2D image)")
    path = scratch(state, ending)
    with open(path, "wb") as f:
        f.write(head)
        while chunk := await upload.read(_CHUNK):
            f.write(chunk)
    return path


async def segment_in_turn(s: Slot, image: Path, out: Path, source_values: bool, name: str,
                          ticket: Optional[str]) -> None:
    """Segment ``image`` into ``out`` when the model's turn comes (:func:`run_in_turn`); 400 naming ``name`` when
    the model refuses the image."""
    await run_in_turn(s, lambda: s.model.segment(image, out, source_values), ticket, str(image), name)


async def run_in_turn(s: Slot, work: Callable[[], object], ticket: Optional[str], where: str, name: str,
                      refused: int = 400):
    """``work()`` (the model's) in a worker thread when the model's turn comes; its result.

    503 (with Retry-After and a ticket) when the model's line is full; ``refused`` when ``work`` raises an
    :class:`~autoseg.errors.AutosegError`, with its first line and ``where`` (a private path) named ``name``.
    """
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
    task = asyncio.ensure_future(run_in_threadpool(work))
    try:
        return await asyncio.shield(task)  # a dropped client does not free the model while its thread still runs
    except AutosegError as e:
        raise HTTPException(refused, str(e).splitlines()[0].replace(where, name)) from None
    finally:
        if task.done():
            release()
        else:
            task.add_done_callback(release)


def remove(*paths: Path) -> None:
    for p in paths:
        Path(p).unlink(missing_ok=True)
