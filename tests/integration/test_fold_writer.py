"""``autoseg train`` of a fold that another process is writing exits 2 with one line naming the folder and the
holder."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from autoseg.cli import main
from autoseg.workflow.lock import writer_lock


@pytest.mark.slow  # ~13 s: plan, then a CLI process that imports torch
def test_a_second_train_of_a_fold_exits_2_naming_the_holder(tiny_raw, tmp_path):
    ws = tmp_path / "ws"
    assert main(["plan", str(tiny_raw), "-w", str(ws), "-j", "1", "--no-preprocess"]) == 0  # refused before any use
    fold = ws / "Tiny" / "models" / "3d_fullres" / "fold_0"
    with writer_lock(fold):  # the first writer: this process
        second = subprocess.run([sys.executable, "-m", "autoseg", "train", "Tiny", "-w", str(ws), "-c", "3d_fullres",
                                 "-f", "0", "--epochs", "1", "--iterations-per-epoch", "1", "-j", "0",
                                 "--no-validation"], capture_output=True, text=True, timeout=300)
    assert second.returncode == 2, second.stderr
    assert second.stderr.splitlines() == [
        f"error: {fold}: another process is writing this fold folder (pid {os.getpid()} on {os.uname().nodename} "
        f"since {second.stderr.split(' since ')[1].split(')')[0]}); a fold folder has one writer at a time: wait "
        f"for it to end or stop it"]
    assert not (fold / "checkpoint_latest.pt").exists() and not (fold / "train_config.json").exists()
