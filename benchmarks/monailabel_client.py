"""``autoseg serve`` against MONAI Label's own client class, ``monailabel.client.MONAILabelClient``.

    .venv/bin/python benchmarks/monailabel_client.py -w WORKSPACE --client-python PY [--dataset Hippocampus] [-n 5]

``monailabel`` does not install into autoseg's environment (it pins MONAI, SAM2, torchvision... against our torch
pin), but its client module needs only ``requests``; so it lives in its own virtualenv::

    python3 -m venv /tmp/mlvenv && /tmp/mlvenv/bin/pip install --no-deps monailabel==0.8.5 requests urllib3 \\
        idna charset-normalizer certifi

This script predicts ``-n`` test images with ``autoseg predict`` (the reference), starts ``autoseg serve`` on a free
localhost port, and runs, in ``--client-python``, ``MONAILabelClient.info()``, then for each image
``upload_image`` + ``infer(model, image_id)`` (the datastore path 3D Slicer uses) and ``infer(model, "", file=...)``
(the direct upload path). Every returned label map is compared voxel for voxel with the reference; prints what
matched and exits 1 on any mismatch or error.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _serve import start_server
from autoseg import api
from autoseg.io.image import read_label

HIPPO_TS = Path(__file__).resolve().parents[2] / "shared" / "data" / "Task04_Hippocampus" / "imagesTs"

#: runs in the monailabel virtualenv: argv = url, model, out dir, image paths; prints one JSON line
CLIENT = r"""
import json, shutil, sys
from pathlib import Path
import monailabel
from monailabel.client import MONAILabelClient
url, model, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
c = MONAILabelClient(url, tmpdir=str(out / "tmp"))
(out / "tmp").mkdir(parents=True, exist_ok=True)
info = c.info()
result = {"monailabel": monailabel.__version__, "models": list(info["models"]), "labels": info["models"][model]["labels"],
          "datastore": [], "direct": []}
for image in sys.argv[4:]:
    name = Path(image).name
    image_id = c.upload_image(image, image_id=name.split(".")[0])["image"]
    path, params = c.infer(model, image_id, {})
    shutil.move(path, out / ("store_" + name))
    result["datastore"].append([name, str(out / ("store_" + name)), params.get("label_names")])
    path, params = c.infer(model, "", {}, file=image)
    shutil.move(path, out / ("direct_" + name))
    result["direct"].append([name, str(out / ("direct_" + name)), params.get("label_names")])
print(json.dumps(result))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-w", "--workspace", type=Path, required=True)
    ap.add_argument("--client-python", required=True, help="a python with monailabel (its client) importable")
    ap.add_argument("--dataset", default="Hippocampus")
    ap.add_argument("--images", type=Path, default=HIPPO_TS)
    ap.add_argument("-n", type=int, default=5, help="number of test images")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="monailabel_client_"))
    images = sorted(args.images.glob("*.nii.gz"))[: args.n]
    (tmp / "in").mkdir()
    for p in images:
        (tmp / "in" / p.name).symlink_to(p.resolve())
    api.predict(args.workspace, args.dataset, tmp / "in", tmp / "reference", progress=False)

    server, url = start_server(args.workspace, args.dataset, tmp / "server.log")
    try:
        t0 = time.perf_counter()
        run = subprocess.run([args.client_python, "-c", CLIENT, url, args.dataset, str(tmp / "out"),
                              *map(str, images)], capture_output=True, text=True)
        seconds = time.perf_counter() - t0
    finally:
        server.terminate()
        server.wait(120)
    if run.returncode != 0:
        raise SystemExit(f"MONAILabelClient failed:\n{run.stderr}")
    result = json.loads(run.stdout.strip().splitlines()[-1])
    print(f"[bench] MONAILabelClient (monailabel {result['monailabel']}) against autoseg serve {args.dataset}, "
          f"{len(images)} test images, {seconds:.0f} s")
    print(f"  info(): models {result['models']}, labels of {args.dataset}: {result['labels']}")
    bad = 0
    for path_kind, rows in (("upload_image + infer(model, image_id)", result["datastore"]),
                            ("infer(model, '', file=...)", result["direct"])):
        same = 0
        for name, got, label_names in rows:
            equal = np.array_equal(read_label(Path(got))[0], read_label(tmp / "reference" / name)[0])
            same += equal
            bad += not equal
        print(f"  {path_kind}: {same} of {len(rows)} label maps identical to autoseg predict "
              f"(label_names in params: {rows[0][2] if rows else None})")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
