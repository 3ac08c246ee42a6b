"""MONAI Label's ``POST /infer/{model}``: the image inline (an image file, or a zip of one DICOM series) or
uploaded before, or (with a DICOMweb datastore) a series of the PACS by its SeriesInstanceUID; the result as
MONAI Label's multipart form (``params`` with ``label_names``, then the label file), or only one of the two
(``output``). A PACS series' result is also stored back there as a DICOM-SEG, which ``params.dicom_seg`` locates
(``output=dicom_seg``: the SEG itself is the reply, as MONAI Label answers).
"""

import secrets
from pathlib import Path
from typing import Optional

from fastapi import APIRouter, Depends, File, Form, Header, HTTPException, Query, UploadFile
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from autoseg.errors import AutosegError
from autoseg.server.admission import Slot
from autoseg.server.archive import ArchiveTooLarge, extract_zip
from autoseg.server.context import (ServerState, get_state, model_slot, parse_params, remove, run_in_turn, scratch,
                                    scratch_folder, segment_in_turn, spool)
from autoseg.server.dicomweb import DicomWebError
from autoseg.server.options import RESULT_ENDINGS, TICKET_HEADER
from autoseg.server.responses import disposition, label_dict, multipart, stem

router = APIRouter()


@router.post("/infer/{model}")
async def infer(model: str, image: str = Query(""), session_id: str = Query(""), output: str = Query(""),
                params: str = Form("{}"), file: Optional[UploadFile] = File(None),
                ticket: Optional[str] = Header(None, alias=TICKET_HEADER), s: Slot = Depends(model_slot),
                state: ServerState = Depends(get_state)):
    if output not in ("", "all", "image", "json", "dicom_seg"):
        raise HTTPException(422, f"output '{output}': this server answers image, json or all (or dicom_seg for a "
                                 f"series of its DICOMweb datastore)")
    ending = parse_params(params).get("result_extension") or ".nii.gz"
    if ending not in RESULT_ENDINGS:
        raise HTTPException(400, f"result_extension '{ending}': expected one of {', '.join(RESULT_ENDINGS)}")
    name = file.filename if file is not None else image
    stored = None
    pacs = not session_id and file is None and state.studies is not None and image and state.store.get(image) is None
    if output == "dicom_seg" and not pacs:
        raise HTTPException(422, "output 'dicom_seg': only for a series of the DICOMweb datastore (--studies)")
    if file is not None:
        data = await _infer_upload(s, state, file, ending, ticket)
    elif pacs:
        data, seg, stored = await _infer_series(s, state, image, ending, ticket)
        if output == "dicom_seg":
            return Response(seg, media_type="application/dicom",
                            headers={"Content-Disposition": disposition("attachment", f"{image}_seg.dcm")})
    else:
        data = await _infer_stored(s, state, image, session_id, ending, ticket)
    result = {"label_names": label_dict(s.model), "latencies": {"infer": round(s.model.last_seconds, 3)},
              "model": model, **({"dicom_seg": stored} if stored else {})}
    if output == "json":
        return result
    filename = f"{stem(name) or 'result'}_seg{ending}"
    if output == "image":
        return Response(data, media_type="application/octet-stream",
                        headers={"Content-Disposition": disposition("attachment", filename)})
    boundary = secrets.token_hex(16)
    return Response(multipart(result, filename, data, boundary),
                    media_type=f"multipart/form-data; boundary={boundary}")


async def _segmented(s: Slot, state: ServerState, source: Path, ending: str, name: str, ticket) -> bytes:
    """The label map of an image file (or a folder of one DICOM series) as the bytes of a ``ending`` file."""
    out = scratch(state, ending)
    try:
        await segment_in_turn(s, source, out, False, name, ticket)
        return out.read_bytes()
    finally:
        remove(out)


async def _infer_stored(s: Slot, state: ServerState, image: str, session_id: str, ending: str, ticket) -> bytes:
    """An image uploaded before (``PUT /datastore/`` or ``/session/``) segmented; 404 when there is none."""
    key = f"session:{session_id}" if session_id else image
    source = state.store.get(key) if key else None
    if source is None:
        raise HTTPException(404, f"no uploaded image '{session_id or image}': send it as the file field, "
                                 f"or PUT /datastore/?image=ID first")
    return await _segmented(s, state, source, ending, image or "image", ticket)


async def _infer_upload(s: Slot, state: ServerState, file: UploadFile, ending: str, ticket) -> bytes:
    """An uploaded image, or zip of one DICOM series (unpacked within the upload limit), segmented."""
    source = await spool(state, file, zipped=True)
    name = file.filename or "image"
    try:
        if source.suffix != ".zip":
            return await _segmented(s, state, source, ending, name, ticket)
        with scratch_folder(state) as folder:
            try:
                await run_in_threadpool(extract_zip, source, folder, int(state.options.max_upload_mb * 1e6), name)
            except ArchiveTooLarge as e:
                raise HTTPException(413, str(e)) from None
            except AutosegError as e:
                raise HTTPException(400, str(e).splitlines()[0]) from None
            remove(source)
            return await _segmented(s, state, folder, ending, name, ticket)
    finally:
        remove(source)


async def _infer_series(s: Slot, state: ServerState, series_uid: str, ending: str,
                        ticket) -> tuple[bytes, bytes, dict]:
    """A DICOMweb series fetched (WADO-RS), segmented, its DICOM-SEG stored back (STOW-RS): the label map's
    bytes, the SEG's and where it went. 404 for a series not there, 422 for one failing the DICOM checks, 502 when the
    DICOMweb server fails; nothing is left behind."""
    studies = state.studies
    with scratch_folder(state) as folder:
        series, seg_file, out = folder / "series", folder / "seg.dcm", folder / f"result{ending}"
        try:
            await run_in_threadpool(studies.fetch, series_uid, series)
            await run_in_turn(s, lambda: s.model.segment_series(series, seg_file, out), ticket, str(series),
                              studies.url, refused=422)
            stored = await run_in_threadpool(studies.store, seg_file)
        except DicomWebError as e:
            raise HTTPException(e.status, str(e)) from None
        return out.read_bytes(), seg_file.read_bytes(), stored.as_dict()
