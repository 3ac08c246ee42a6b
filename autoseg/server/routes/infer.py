"""MONAI Label's ``POST /infer/{model}``: the image inline or uploaded before, the result as MONAI Label's
multipart form (``params`` with ``label_names``, then the label file), or only one of the two (``output``)."""

import secrets
from typing import Optional

from fastapi import APIRouter, Depends, File, Form, Header, HTTPException, Query, UploadFile
from fastapi.responses import Response

from autoseg.server.admission import Slot
from autoseg.server.context import (ServerState, get_state, model_slot, parse_params, remove, scratch,
                                    segment_in_turn, spool)
from autoseg.server.options import RESULT_ENDINGS, TICKET_HEADER
from autoseg.server.responses import disposition, label_dict, multipart, stem

router = APIRouter()


@router.post("/infer/{model}")
async def infer(model: str, image: str = Query(""), session_id: str = Query(""), output: str = Query(""),
                params: str = Form("{}"), file: Optional[UploadFile] = File(None),
                ticket: Optional[str] = Header(None, alias=TICKET_HEADER), s: Slot = Depends(model_slot),
                state: ServerState = Depends(get_state)):
    if output not in ("", "all", "image", "json"):
        raise HTTPException(422, f"output '{output}': this server answers image, json or all")
    ending = parse_params(params).get("result_extension") or ".nii.gz"
    if ending not in RESULT_ENDINGS:
        raise HTTPException(400, f"result_extension '{ending}': expected one of {', '.join(RESULT_ENDINGS)}")
    if file is not None:
        source, owned = await spool(state, file), True
    else:
        key = f"session:{session_id}" if session_id else image
        source, owned = (state.store.get(key) if key else None), False
        if source is None:
            raise HTTPException(404, f"no uploaded image '{session_id or image}': send it as the file field, "
                                     f"or PUT /datastore/?image=ID first")
    name = file.filename if file is not None else image
    out = scratch(state, ending)
    try:
        await segment_in_turn(s, source, out, False, name or "image", ticket)
        data = out.read_bytes()
    finally:
        remove(out, *([source] if owned else []))
    result = {"label_names": label_dict(s.model), "latencies": {"infer": round(s.model.last_seconds, 3)},
              "model": model}
    if output == "json":
        return result
    filename = f"{stem(name) or 'result'}_seg{ending}"
    if output == "image":
        return Response(data, media_type="application/octet-stream",
                        headers={"Content-Disposition": disposition("attachment", filename)})
    boundary = secrets.token_hex(16)
    return Response(multipart(result, filename, data, boundary),
                    media_type=f"multipart/form-data; boundary={boundary}")
