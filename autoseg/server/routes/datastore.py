"""MONAI Label's image uploads for a later ``/infer``: ``PUT /datastore/?image=ID`` and the sessions
(``PUT /session/``, ``GET``/``DELETE /session/{id}``)."""

import uuid

from fastapi import APIRouter, Depends, File, Form, HTTPException, Query, UploadFile

from autoseg.server.context import ServerState, get_state, parse_params, spool
from autoseg.server.responses import stem

router = APIRouter()


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
