"""MONAI Label's ``GET /info/``: the models as segmentation apps, every label name, and no trainers or strategies
(which is how the Slicer extension learns that those are off)."""

from fastapi import APIRouter, Depends

from autoseg import __version__
from autoseg.server.context import ServerState, get_state
from autoseg.server.responses import label_dict

router = APIRouter()


@router.get("/info/")
@router.get("/info", include_in_schema=False)
async def info(state: ServerState = Depends(get_state)):
    names: list[str] = []
    for s in state.slots.values():
        names += [n for n in s.model.label_names if n not in names]
    return {"name": "autoseg", "description": "autoseg models", "version": __version__, "labels": names,
            "models": {name: {"type": "segmentation", "labels": label_dict(s.model), "dimension": s.model.dims,
                              "description": s.model.description, "config": {}}
                       for name, s in state.slots.items()},
            "trainers": {}, "strategies": {}, "scoring": {}, "train_stats": {},
            "datastore": {"total": len(state.store.files), "completed": 0}}
