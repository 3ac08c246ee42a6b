"""A full disk (a mocked ``ENOSPC`` at the write call) while training writes a checkpoint and while prediction
writes a label map: one line naming the file, exit 1, no partial file, the previous checkpoint intact and the run
resumable."""

from __future__ import annotations

import errno
import hashlib
from pathlib import Path

import pytest

from autoseg.cli import main

TRAIN = ["-c", "3d_fullres", "-f", "0", "--iterations-per-epoch", "2", "--validation-iterations", "1", "-j", "0",
         "--checkpoint-every", "1", "--no-validation", "--device", "cpu"]


def _no_space(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture
def planned(tiny_raw, tmp_path):
    from autoseg import api

    ws = tmp_path / "ws"
    api.plan(tiny_raw, ws, num_workers=1, progress=False)
    return ws


def _errors(stderr: str) -> list[str]:
    assert "Traceback" not in stderr
    return [ln for ln in stderr.replace("\r", "\n").splitlines() if ln.startswith("error")]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_disk_full_during_a_checkpoint_write(planned, monkeypatch, capsys):
    import autoseg.nn.checkpoint as checkpoint

    ws = str(planned)
    fold = planned / "Tiny" / "models" / "3d_fullres" / "fold_0"
    latest = fold / "checkpoint_latest.pt"
    real = checkpoint.atomic_write
    written = {}

    def full_disk_on_the_second_latest(path, write):
        if Path(path) == latest and latest.exists():
            def half(f):
                f.write(b"\0" * 4096)  # the first part of the file makes it, then the disk is full
                _no_space()
            return real(path, half)
        real(path, write)
        written[Path(path).name] = _sha(Path(path))

    monkeypatch.setattr(checkpoint, "atomic_write", full_disk_on_the_second_latest)
    assert main(["train", "Tiny", "-w", ws, *TRAIN, "--epochs", "3"]) == 1
    err = _errors(capsys.readouterr().err)
    assert err == [f"error: {latest}: No space left on device"] and "Traceback" not in err
    assert _sha(latest) == written["checkpoint_latest.pt"]  # the previous checkpoint is intact
    assert not list(fold.glob(".*.tmp*")) and not (fold / "checkpoint_final.pt").exists()
    monkeypatch.setattr(checkpoint, "atomic_write", real)  # space freed: the run resumes from it
    assert main(["train", "Tiny", "-w", ws, *TRAIN, "--epochs", "3", "--resume"]) == 0
    out = capsys.readouterr().out
    assert "epoch 2/3" in out and "epoch 1/3" not in out  # continued after the last good checkpoint
    assert (fold / "checkpoint_final.pt").is_file()


def test_disk_full_during_prediction_output(planned, tiny_raw, tmp_path, monkeypatch, capsys):
    import autoseg.io.image as image

    ws = str(planned)
    assert main(["train", "Tiny", "-w", ws, *TRAIN, "--epochs", "1"]) == 0
    real = image.sitk.WriteImage

    def full_disk(img, name, *args, **kwargs):
        Path(name).write_bytes(b"\0" * 100)  # ITK got part of the file out
        raise RuntimeError("ITK ERROR: NiftiImageIO(0x55): Could not write: No space left on device")

    monkeypatch.setattr(image.sitk, "WriteImage", full_disk)
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["predict", "Tiny", "-w", ws, "-i", str(tiny_raw / "imagesTs"), "-o", str(out), "-c",
                 "3d_fullres", "-f", "0", "--no-tta"]) == 1
    err = _errors(capsys.readouterr().err)
    first = sorted((tiny_raw / "imagesTs").glob("*.nii.gz"))[0].name
    assert len(err) == 1 and err[0].startswith(f"error: {out / first}: cannot be written") and "No space" in err[0]
    assert list(out.iterdir()) == []  # no partial label map, no temporary file
    monkeypatch.setattr(image.sitk, "WriteImage", real)
    assert main(["predict", "Tiny", "-w", ws, "-i", str(tiny_raw / "imagesTs"), "-o", str(out), "-c",
                 "3d_fullres", "-f", "0", "--no-tta"]) == 0
