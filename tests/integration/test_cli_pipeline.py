"""The whole CLI path on a tiny synthetic dataset: plan -> train (killed, resumed, extended) -> validation ->
predict -> evaluate."""

import json
import signal
import subprocess
import sys
import time

import pytest

from autoseg.cli import main
from autoseg.io.image import read_image

TRAIN = ["-c", "3d_fullres", "-f", "0", "--iterations-per-epoch", "2", "--validation-iterations", "1", "-j", "0"]


def _autoseg(*args, **kw):
    return subprocess.run([sys.executable, "-m", "autoseg", *args], capture_output=True, text=True, **kw)


@pytest.fixture(scope="module")
def planned(tiny_raw, tmp_path_factory):
    ws = tmp_path_factory.mktemp("ws")
    assert main(["plan", str(tiny_raw), "-w", str(ws), "-j", "2"]) == 0
    return ws


def test_train_killed_resumed_extended_then_predict_and_evaluate(planned, tiny_raw, tmp_path, capsys):
    ws = str(planned)
    fold = planned / "Tiny" / "models" / "3d_fullres" / "fold_0"
    # 1. a run killed with SIGKILL after its first checkpoint
    proc = subprocess.Popen([sys.executable, "-m", "autoseg", "train", "Tiny", "-w", ws, *TRAIN, "--epochs", "20",
                             "--checkpoint-every", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (fold / "checkpoint_latest.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (fold / "checkpoint_latest.pt").exists() and not (fold / "checkpoint_final.pt").exists()

    # 2. without --resume the unfinished run is refused and left alone
    r = _autoseg("train", "Tiny", "-w", ws, *TRAIN, "--epochs", "3")
    assert r.returncode == 2 and "--resume" in r.stderr and "Traceback" not in r.stderr
    assert (fold / "checkpoint_latest.pt").exists()

    # 3. --resume continues where the checkpoint left off (its own epoch count, 20, is kept unless overridden)
    assert main(["train", "Tiny", "-w", ws, *TRAIN, "--epochs", "3", "--resume", "--no-validation"]) == 0
    epochs = [json.loads(line)["epoch"] for line in (fold / "log.jsonl").read_text().splitlines()]
    assert epochs == [0, 1, 2]
    assert (fold / "checkpoint_final.pt").exists() and not (fold / "checkpoint_latest.pt").exists()

    # 4. asking the finished run for more epochs extends it; then the final validation runs
    assert main(["train", "Tiny", "-w", ws, *TRAIN, "--epochs", "4"]) == 0
    epochs = [json.loads(line)["epoch"] for line in (fold / "log.jsonl").read_text().splitlines()]
    assert epochs == [0, 1, 2, 3]
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert summary["cases"] and (fold / "progress.png").stat().st_size > 0
    capsys.readouterr()

    # 5. predict the test images: same names and geometry as the inputs
    out = tmp_path / "pred"
    assert main(["predict", "Tiny", "-w", ws, "-i", str(tiny_raw / "imagesTs"), "-o", str(out), "-c", "3d_fullres",
                 "--save-probabilities"]) == 0
    for img in sorted((tiny_raw / "imagesTs").iterdir()):
        seg, g_seg = read_image([out / img.name])
        src, g_src = read_image([img])
        assert seg.shape[1:] == src.shape[1:]
        assert g_seg.direction == pytest.approx(g_src.direction) and g_seg.origin == pytest.approx(g_src.origin)
        assert g_seg.spacing == pytest.approx(g_src.spacing)
        assert (out / (img.name[:-7] + ".npz")).is_file()
    # existing outputs are not overwritten without --overwrite
    assert main(["predict", "Tiny", "-w", ws, "-i", str(tiny_raw / "imagesTs"), "-o", str(out)]) == 2

    # 6. evaluate the fold's validation predictions against the raw labels
    assert main(["evaluate", str(fold / "validation"), str(tiny_raw / "labelsTr"), "--dataset", "Tiny", "-w", ws,
                 "--predicted-only", "-o", str(tmp_path / "summary.json")]) == 0
    assert json.loads((tmp_path / "summary.json").read_text())["foreground_mean_dice"] is not None
