"""``benchmarks/gpu_check.py --dry-run``: the device check runs on the CPU as it would on the GPU machine (autoseg
not installed, no SimpleITK: ``--bare``) and writes a report with every section's numbers."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


def _run(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--bare", "--out", str(out), *args],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["schema"] == "autoseg gpu_check 1" and report["dry_run"] is True
    for name, section in report["sections"].items():
        assert "error" not in section and "exit" not in section, (name, section.get("error"))
        assert section["skipped"] == [], name
        assert all("error" not in item for item in section["items"]), (name, section["items"])
    return report


def test_environment_and_reductions(tmp_path):
    """The quick part (no data): the trainer's reductions through a one-rank group (gloo here, NCCL on a GPU)."""
    report = _run(tmp_path, "--sections", "environment", "reductions")
    env = report["sections"]["environment"]["environment"]
    assert env["device"] == "cpu" and env["precision_auto"] in ("fp32", "bf16") and env["usable_cpus"] >= 1
    assert env["collective_timeout_minutes"]["gloo"] == 30.0
    red = report["sections"]["reductions"]
    assert red["backend"] == "gloo" and red["cpu_tensor"] == "accepted"  # gloo takes CPU tensors; NCCL does not
    assert [i["training"] for i in red["items"]] == ["labels", "regions", "labels + copy_paste",
                                                     "regions + pseudo_label"]
    for item in red["items"]:
        assert item["ok"] and item["epochs"] == 2 and item["mean_over_ranks"] == 1.5
        assert len(item["replica_sha256"]) == 64 and len(item["pseudo_dice"]) == 2
        assert all(0.0 <= d <= 1.0 for d in item["pseudo_dice"])


@pytest.mark.slow  # ~20-60 s: a tiny dataset planned, then steps, a fold and its predictions, compiled steps
def test_every_section(tmp_path):
    report = _run(tmp_path)
    sections = report["sections"]
    assert list(sections) == ["environment", "reductions", "memory", "fold", "speed"]
    assert report["seconds"] < 300

    memory = sections["memory"]
    assert {(i["configuration"], i["target"]) for i in memory["items"]} >= {("3d_fullres", "nnunet"),
                                                                            ("3d_fullres", "device")}
    for item in memory["items"]:
        assert item["estimated_gb"] > 0 and item["step_seconds"] > 0 and item["batch_size"] >= 1
        assert item["measured_gb"] is None  # no allocator statistics on the CPU
        assert item["epoch_seconds_250"] == pytest.approx(250 * item["step_seconds"])
    rows = {r["configuration"]: r for r in memory["target_comparison"]}
    assert rows["3d_fullres"]["device"]["estimated_gb"] >= rows["3d_fullres"]["nnunet"]["estimated_gb"]

    fold = sections["fold"]
    assert fold["epochs"] == 1 and fold["iterations"] == 2 and 0.0 <= fold["data_wait_fraction"] <= 1.0
    assert len(fold["cases"]) == 2
    for key, p in fold["predictions"].items():
        # the dry run's second predictor is fp32 on the CPU too: the same numbers as the reference
        assert p["min_label_agreement"] == 1.0 and p["max_probability_difference"] == 0.0, key
        assert 0.0 <= p["mean_dice_vs_truth"] <= 1.0

    speed = {(i["precision"], i["compile"]): i for i in sections["speed"]["items"]}
    assert len(speed) == 4
    assert "only on CUDA" in speed[("fp16", False)]["skipped"] and "only on CUDA" in speed[("fp16", True)]["skipped"]
    ran = [i for i in speed.values() if "skipped" not in i]
    assert {i["compile"] for i in ran} == {False, True}
    for item in ran:
        assert item["step_seconds"] > 0 and 0.0 <= item["data_wait_fraction"] <= 1.0
        assert math.isfinite(item["train_loss"]) and item["batches_pinned"] is False  # no CUDA: nothing pinned
