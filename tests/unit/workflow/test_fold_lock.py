"""One writer per fold folder: a second process is refused with one line naming the folder and the holder; the lock
dies with its holder (a forked worker outliving it does not keep it); ``--overwrite`` emptying the folder keeps it
locked."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import pytest

from autoseg.errors import AutosegError
from autoseg.workflow.lock import LOCK_NAME, writer_lock

HOLD = ("import os, sys, time\nfrom autoseg.workflow.lock import writer_lock\nlock = writer_lock(sys.argv[1])\n"
        "child = os.fork()\nif child == 0:\n    time.sleep(120)\n    os._exit(0)\n"  # a worker that outlives it
        "print(child, flush=True)\ntime.sleep(120)\n")
TRY = ("import sys\nfrom autoseg.errors import AutosegError\nfrom autoseg.workflow.lock import writer_lock\n"
       "try:\n    writer_lock(sys.argv[1]).release()\nexcept AutosegError as e:\n    print(e)\n    sys.exit(2)\n")


def _holder(folder):
    """A process holding the lock, and the pid of a forked child of it."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    return proc, int(proc.stdout.readline())


def test_a_second_writer_is_refused_until_the_holder_dies(tmp_path):
    folder = tmp_path / "models" / "3d_fullres" / "fold_0"
    holder, child = _holder(folder)
    try:
        with pytest.raises(AutosegError) as e:
            writer_lock(folder)
        assert (folder / LOCK_NAME).read_text().startswith(f"pid {holder.pid} on ")
        msg = str(e.value)
        assert msg.startswith(f"{folder}: another process is writing this fold folder (pid {holder.pid} on ")
        assert "\n" not in msg and "one writer at a time" in msg
        holder.send_signal(signal.SIGKILL)  # no clean-up runs: the kernel drops the lock
        holder.wait()
        os.kill(child, 0)  # the forked child lives on
        with writer_lock(folder) as lock:
            pass
    finally:
        holder.kill()
        os.kill(child, signal.SIGKILL)
    with writer_lock(folder) as lock:
        assert (folder / LOCK_NAME).read_text().startswith(f"pid {os.getpid()} on ")  # reading keeps it locked
        with pytest.raises(AutosegError, match=f"pid {os.getpid()} on "):
            writer_lock(folder)  # a second writer in the same process too
        refused = subprocess.run([sys.executable, "-c", TRY, str(folder)], capture_output=True, text=True)
        assert refused.returncode == 2 and f"(pid {os.getpid()} on " in refused.stdout
    assert lock.fd is None
    assert subprocess.run([sys.executable, "-c", TRY, str(folder)]).returncode == 0  # released


def test_the_lock_survives_the_folder_being_emptied(tmp_path):
    folder = tmp_path / "fold_0"
    with writer_lock(folder) as lock:
        shutil.rmtree(folder)  # what --overwrite does to a killed run's folder
        lock.ensure()
        refused = subprocess.run([sys.executable, "-c", TRY, str(folder)], capture_output=True, text=True)
        assert refused.returncode == 2, refused.stdout + refused.stderr
