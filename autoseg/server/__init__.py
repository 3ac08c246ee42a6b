"""``autoseg serve``: trained models over HTTP, for 3D Slicer's MONAI Label extension and any other client.

Endpoints (the model in a URL is the dataset name; images travel as a multipart file field named ``file``), one
router per family under :mod:`autoseg.server.routes`:

* ``GET /healthz`` (:mod:`~autoseg.server.routes.health`): liveness and the models served (no token needed).
* ``POST /v1/segment/{model}`` (:mod:`~autoseg.server.routes.v1`): NIfTI / NRRD / MHA (or a 2D image for a 2D
  model) in, the label map in the same format and geometry out, with the dataset's own label values.
* The MONAI Label subset the Slicer extension and ``MONAILabelClient`` use for automatic segmentation
  (``../shared/peers/MONAI_LABEL_API.md``): ``GET /info/`` (:mod:`~autoseg.server.routes.info`),
  ``POST /infer/{model}`` (:mod:`~autoseg.server.routes.infer`: file inline, or an image uploaded before by
  ``PUT /datastore/?image=ID`` or ``PUT /session/``), ``GET``/``DELETE /session/{id}``
  (:mod:`~autoseg.server.routes.datastore`). The reply of ``/infer`` is MONAI Label's multipart form (``params``
  with ``label_names``, then the label file) with a Content-Length, labels valued 1..N in ``label_names`` order.
  Training, active learning and auth endpoints are absent (404), which is how the extension learns that they are
  off. ``/infer`` also takes a zip of one DICOM series as its file (:mod:`~autoseg.server.archive`: unpacked into
  the spool folder, no path outside it, no more bytes than an upload may have), and ``GET /datastore/`` lists the
  images.
* With a DICOMweb datastore (``autoseg serve --studies URL``, :mod:`~autoseg.server.dicomweb`): ``GET
  /datastore/`` lists the server's image series (QIDO-RS), ``/infer/{model}?image=SERIES_UID`` fetches one
  (WADO-RS), segments it and stores the DICOM-SEG back (STOW-RS); ``params.dicom_seg`` says where
  (``output=dicom_seg``: the SEG is the reply). 404: a series
  not there; 422: one failing the DICOM checks; 502: the DICOMweb server failing.

Bounded work (:mod:`autoseg.server.admission`): each model runs one inference at a time; at most ``queue`` more
wait, beyond that a request gets 503 with a ``Retry-After`` estimate (seconds until a place is expected to be
free: the moving average of the measured inference time times the inferences that must end first) and an
``Autoseg-Ticket``: sent back as the ``Autoseg-Ticket`` header of the retry, it keeps the client's place in line
(requests are admitted in the order they first asked; a ticket lapses when its holder is not back within a grace
period after its Retry-After, and a model with nothing to do takes the next request). ``GET /healthz`` reports
each model's ``load`` (running, waiting, tickets). Uploads over ``max_upload_mb`` get 413 before they are read;
uploads are spooled to a private temporary folder removed at shutdown (stored datastore/session images: the
``max_stored`` most recent). A bad upload is a 4xx with a one-line ``detail``; the server keeps serving. Binds
127.0.0.1 unless told otherwise; with a token, every endpoint but ``/healthz`` needs ``Authorization: Bearer
<token>``. On SIGINT or SIGTERM uvicorn stops accepting connections and finishes the requests in flight before
exiting. Result file names travel as RFC 6266 ``Content-Disposition`` (an ASCII ``filename`` plus
``filename*=UTF-8''...`` for any other name).

The app (:mod:`autoseg.server.app`) is assembled from the routers with its state injected as a FastAPI
dependency (:mod:`autoseg.server.context`: the model registry with each model's line, the options, the upload
store), so each endpoint can be tested in-process with FastAPI's TestClient. FastAPI, uvicorn and
python-multipart are the optional extra ``[serve]``, imported when the app is created.
"""

from autoseg.server.app import create_app, serve
from autoseg.server.options import RESULT_ENDINGS, TICKET_HEADER, ServeOptions

__all__ = ["create_app", "serve", "ServeOptions", "RESULT_ENDINGS", "TICKET_HEADER"]
