"""A server's limits and access, and the names its clients see."""

from dataclasses import dataclass

#: Endings a MONAI Label client may ask for in ``params.result_extension``.
RESULT_ENDINGS = (".nrrd", ".nii.gz", ".nii", ".mha")
#: Request/response header carrying a client's place in line (see :class:`autoseg.server.admission.Turns`).
TICKET_HEADER = "Autoseg-Ticket"


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
