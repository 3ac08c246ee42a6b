"""``GET /healthz``: liveness, the models served and each one's load (no token needed)."""

from fastapi import APIRouter, Depends

from autoseg import __version__
from autoseg.server.context import ServerState, get_state

router = APIRouter()


@router.get("/healthz")
async def healthz(state: ServerState = Depends(get_state)):
    return {"status": "ok", "version": __version__, "models": list(state.slots),
            "load": {name: s.load() for name, s in state.slots.items()}}
