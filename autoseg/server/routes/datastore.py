"""MONAI Label's datastore: its listing (``GET /datastore/?output=stats|all``: the DICOMweb server's image series
with ``--studies``, else the uploaded images), image uploads for a later ``/infer`` (``PUT /datastore/?image=ID``)
and the sessions (``PUT /session/``, ``GET``/``DELETE /session/{id}``)."""

import uuid

from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, UploadFile
from starlette.concurrency import run_in_threadpool

from autoseg.server.context import ServerState, get_state, parse_params, spool
from autoseg.server.dicomweb import DicomWebError
from autoseg.server.responses import stem

router = APIRouter()


@router.get("/datastore/")
@router.get("/datastore", include_in_schema=False)
async def datastore_get(output: str = Query("stats"), state: ServerState = Depends(get_state)):
    if output not in ("stats", "all"):
        raise HTTPException(422, f"output '{output}': this server lists stats or all")
    images = await _images(state)
    if output == "stats":
        return {"total": len(images), "completed": 0, "label_tags": {}}
    where = state.studies.url if state.studies is not None else "uploads"
    return {"name": where, "description": f"autoseg datastore ({where})",
            "objects": {key: {"image": {"ext": ext, "info": info}, "labels": {}}
                        for key, (ext, info) in images.items()}}


async def _images(state: ServerState) -> dict[str, tuple[str, dict]]:
    """Image id -> (file ending, what is known of it): the DICOMweb server's image series by SeriesInstanceUID
    (a 502 when it fails), else the images uploaded with ``PUT /datastore/``."""
    if state.studies is None:
        return {key: ("".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix,
                      {"size": path.stat().st_size})
                for key, path in state.store.files.items() if not key.startswith("session:")}
    try:
        series = await run_in_threadpool(state.studies.image_series)
    except DicomWebError as e:
        raise HTTPException(e.status, str(e)) from None
    return {record["series_uid"]: ("", record) for record in series if record["series_uid"]}


@router.put("/datastore/")
@router.put("/datastore", include_in_schema=False)
async def datastore_put(image: str = Query(""), params: str = Form("{}"), file: UploadFile = File(...),
                        state: ServerState = Depends(get_state)):
    parse_params(params)
    key = image or stem(file.filename) or uuid.uuid4().hex
    state.store.put(key, await spool(state, file))
    return {"image": key}


@router.put("/session/")
@router.put("/session", include_in_schema=False)
async def session_put(files: list[UploadFile] = File(...), params: str = Form("{}"), client_id: str = Form(""),
                      state: ServerState = Depends(get_state)):
    parse_params(params)
    sid = str(uuid.uuid4())
    state.store.put(f"session:{sid}", await spool(state, files[0]))
    return {"session_id": sid, "session_info": {"name": files[0].filename, "image": sid}}


@router.get("/session/{sid}")
async def session_get(sid: str, state: ServerState = Depends(get_state)):
    path = state.store.get(f"session:{sid}")
    if path is None:
        raise HTTPException(404, f"no session '{sid}'")
    return {"session_id": sid, "image": sid, "size": path.stat().st_size}


@router.delete("/session/{sid}")
async def session_delete(sid: str, state: ServerState = Depends(get_state)):
    path = state.store.files.pop(f"session:{sid}", None)
    if path is None:
        raise HTTPException(404, f"no session '{sid}'")
    path.unlink(missing_ok=True)
    return {"session_id": sid}
