"""``POST /v1/segment/{model}``: an image in, its label map out in the same format and geometry, with the
dataset's own label values."""

from typing import Optional

from fastapi import APIRouter, Depends, File, Header, UploadFile
from fastapi.responses import Response

from autoseg.server.admission import Slot
from autoseg.server.context import ServerState, get_state, model_slot, remove, scratch, segment_in_turn, spool
from autoseg.server.options import TICKET_HEADER
from autoseg.server.responses import disposition, stem

router = APIRouter(prefix="/v1")


@router.post("/segment/{model}")
async def segment(file: UploadFile = File(...), ticket: Optional[str] = Header(None, alias=TICKET_HEADER),
                  s: Slot = Depends(model_slot), state: ServerState = Depends(get_state)):
    image = await spool(state, file)
    ending = "".join(image.suffixes[-2:]) if image.name.endswith(".nii.gz") else image.suffix
    ending = ".png" if ending in (".jpg", ".jpeg") else ending  # a label map is never stored lossy
    out = scratch(state, f"-seg{ending}")
    try:
        await segment_in_turn(s, image, out, True, file.filename or "upload", ticket)
        data = out.read_bytes()
    finally:
        remove(image, out)
    return Response(data, media_type="application/octet-stream",
                    headers={"Content-Disposition": disposition("attachment",
                                                                f"{stem(file.filename) or 'image'}_seg{ending}")})
