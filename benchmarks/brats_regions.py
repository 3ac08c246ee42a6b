"""Region-based vs label-based training on BraTS2015_DeepMedicSubset at equal CPU minutes per fold.

    .venv/bin/python benchmarks/brats_regions.py [--budget 20] [--fold 0] [--out /tmp/brats_regions]

The shared subset (6 cases, FLAIR + T1c, labels 1 necrosis, 2 oedema, 3 non-enhancing, 4 enhancing) is trained
twice, one after the other on this machine, ``3d_fullres`` fold ``--fold`` for ``--budget`` minutes each:

* label-based: the dataset as it is (softmax over the 5 labels);
* region-based: the same files with a ``regions.json`` (whole tumour = 1-4, tumour core = 1, 3, 4, enhancing = 4;
  written in the order 2, 1, 4 so that the label map holds oedema, core, then enhancing), one sigmoid per region.

Both fold's validation predictions are scored with ``autoseg evaluate --regions`` on the same regions. Six cases
(one or two per validation fold) make a small and noisy comparison: the script says so in its summary.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[2] / "shared" / "data" / "BraTS2015_DeepMedicSubset"
REGIONS = {"whole tumour": [1, 2, 3, 4], "tumour core": [1, 3, 4], "enhancing tumour": [4]}
ORDER = [2, 1, 4]
EVAL = [f"{name}={','.join(map(str, labels))}" for name, labels in REGIONS.items()]


def autoseg(*args: str) -> None:
    print(f"[bench] $ autoseg {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, "-m", "autoseg", *args], check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=20.0)
    ap.add_argument("--fold", default="0")
    ap.add_argument("--out", type=Path, default=Path("/tmp/brats_regions"))
    args = ap.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    regions_raw = args.out / "BraTS_regions"
    shutil.copytree(SOURCE, regions_raw)
    meta = json.loads((regions_raw / "dataset.json").read_text())
    meta["name"] = "BraTSRegions"
    (regions_raw / "dataset.json").write_text(json.dumps(meta, indent=2))
    (regions_raw / "regions.json").write_text(json.dumps({"regions": REGIONS, "regions_class_order": ORDER}))
    rows = {}
    for label, raw in (("label-based", SOURCE), ("region-based", regions_raw)):
        ws = args.out / f"ws_{label}"
        autoseg("plan", str(raw), "-w", str(ws), "--budget", f"{args.budget:g}")
        name = json.loads((raw / "dataset.json").read_text())["name"]
        autoseg("train", name, "-w", str(ws), "-c", "3d_fullres", "-f", args.fold, "--budget", f"{args.budget:g}")
        val = ws / name / "models" / "3d_fullres" / f"fold_{args.fold}" / "validation"
        summary_file = args.out / f"{label}_regions_summary.json"
        autoseg("evaluate", str(val), str(raw / "labelsTr"), "--predicted-only", "--regions", *EVAL,
                "-o", str(summary_file))
        summary = json.loads(summary_file.read_text())
        rows[label] = {summary["label_names"][k]: (m["dice"], m["hd95"]) for k, m in summary["mean"].items()}
        rows[label]["cases"] = len(summary["cases"])
    print(f"\n[bench] summary: fold {args.fold}, {args.budget:g} CPU minutes each, scored by region "
          f"(6 cases in all: small and noisy, one or two validation cases per fold)")
    for label, r in rows.items():
        fmt = lambda x, f: "n/a" if x is None else format(x, f)  # noqa: E731
        cells = "  ".join(f"{k} Dice {fmt(v[0], '.4f')} HD95 {fmt(v[1], '.1f')} mm"
                          for k, v in r.items() if k != "cases")
        print(f"  {label:<13} ({r['cases']} cases)  {cells}")


if __name__ == "__main__":
    main()
