import json
from pathlib import Path

import pytest

from autoseg.errors import AutosegError
from autoseg.schema.base import from_jsonable, load_json, save_json, sha256_of, to_jsonable
from autoseg.schema.fingerprint import Fingerprint
from autoseg.schema.plans import ArchitecturePlan, ChannelNormalization, ConfigurationPlan, Plans


def _plans() -> Plans:
    arch = ArchitecturePlan("plain_unet", (32, 64), ((3, 3, 3), (3, 3, 3)), ((1, 1, 1), (2, 2, 2)), (2, 2), (2,))
    cfg = ConfigurationPlan("3d_fullres", (1.0, 1.0, 1.0), (16, 16, 16), 2, (20.0, 20.0, 20.0),
                            (ChannelNormalization("zscore"),), arch, 1000, 0.5, False)
    return Plans("D", "default", 8.0, (0, 1, 2), (0, 1, 2), (1.0, 1.0, 1.0), (20.0, 20.0, 20.0), ("MRI",),
                 ("background", "a"), {"3d_fullres": cfg}, "abc", "0.1.0")


def test_round_trip_and_hash(tmp_path):
    p = _plans()
    save_json(p, tmp_path / "plans.json")
    assert load_json(Plans, tmp_path / "plans.json") == p
    assert from_jsonable(Plans, json.loads(json.dumps(to_jsonable(p)))) == p
    assert sha256_of(p) == sha256_of(load_json(Plans, tmp_path / "plans.json"))
    assert not list(tmp_path.glob(".*tmp"))  # atomic write leaves no temporary file


@pytest.mark.parametrize("content, fragment", [
    ("{not json", "not valid JSON"),
    ('{"schema_version": 99}', "schema_version 99"),
    ('{"schema_version": 1, "dataset_name": 3}', "malformed Plans"),
])
def test_bad_files_are_one_line_errors_naming_the_file(tmp_path, content, fragment):
    f = tmp_path / "plans.json"
    f.write_text(content)
    with pytest.raises(AutosegError) as e:
        load_json(Plans, f)
    assert len(e.value.problems) == 1 and str(f) in e.value.problems[0] and fragment in e.value.problems[0]


def test_missing_file(tmp_path):
    with pytest.raises(AutosegError, match="not found"):
        load_json(Fingerprint, tmp_path / "nope.json")


def test_atomic_path_keeps_the_old_file_on_error_and_the_suffix_for_writers(tmp_path):
    from autoseg.schema.base import atomic_path

    target = tmp_path / "case.nii.gz"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target, keep_suffix=True) as tmp:
            assert tmp.parent == tmp_path and tmp.name.startswith(".case.nii.gz.") and tmp.name.endswith(".tmp.nii.gz")
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["case.nii.gz"]
    with atomic_path(target) as tmp:
        assert tmp.name.endswith(".tmp")
        tmp.write_text("new")
    assert target.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["case.nii.gz"]


def test_a_failed_union_says_why_each_branch_failed(tmp_path):
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class R:
        x: int | tuple[int, int] | None = None

    with pytest.raises(ValueError, match=r"R\.x: 'a' matches none of .*expected an integer, got 'a'.*expected a list"):
        from_jsonable(R, {"x": "a"})


def _fake_temporary(target, suffix=".tmp"):
    """A temporary of ``target`` as a killed writer leaves it (made by the same mkstemp, no lock held)."""
    import os
    import tempfile

    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=suffix)
    os.write(fd, b"half a file")
    os.close(fd)
    return target.parent / os.path.basename(name)


def test_a_write_removes_the_stale_temporaries_of_its_target_and_nothing_else(tmp_path):
    from autoseg.schema.base import atomic_path, atomic_write_text

    target = tmp_path / "model.zip"
    stale = [_fake_temporary(target), _fake_temporary(target, ".tmp.zip")]
    others = [tmp_path / n for n in ("model.zip.bak", ".model.zip.x.abcdefgh.tmp", ".model.zip.abc.tmp",
                                     ".model.zip.abcdefgh.tmp.old", ".other.zip.abcdefgh.tmp", "notes.txt")]
    others.append(_fake_temporary(tmp_path / "model.zip.x"))  # another target's: its writer cleans it
    for p in others:
        if not p.exists():
            p.write_text("keep")
    atomic_write_text(target, "new")
    assert target.read_text() == "new" and not any(p.exists() for p in stale)
    assert all(p.exists() for p in others)
    stale = _fake_temporary(tmp_path / "case.nii.gz", ".tmp.nii.gz")
    with atomic_path(tmp_path / "case.nii.gz", keep_suffix=True) as tmp:
        tmp.write_text("image")
    assert not stale.exists() and all(p.exists() for p in others)
    kept = _fake_temporary(target)  # a writer that cleans its folder once itself (the preprocessed store)
    atomic_write_text(target, "newer", remove_stale=False)
    assert kept.exists() and target.read_text() == "newer"


def test_a_live_writers_temporary_is_kept_a_killed_ones_removed(tmp_path):
    """The lock is what tells them apart: a second process holds a temporary of the target open mid-write, a
    write here keeps it; once that process is killed (SIGKILL: no clean-up of its own), the next write removes
    it."""
    import signal
    import subprocess
    import sys

    from autoseg.schema.base import atomic_write_text

    target = tmp_path / "checkpoint.pt"
    writer = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom pathlib import Path\nfrom autoseg.schema.base import "
         "atomic_path\nwith atomic_path(Path(sys.argv[1])) as tmp:\n    tmp.write_text('half')\n    print(tmp, "
         "flush=True)\n    time.sleep(600)\n", str(target)], stdout=subprocess.PIPE, text=True)
    try:
        live = Path(writer.stdout.readline().strip())
        assert live.exists()
        atomic_write_text(target, "mine")
        assert live.exists() and target.read_text() == "mine"
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        writer.stdout.close()
    assert live.exists()  # killed mid-write: its temporary stays behind
    atomic_write_text(target, "again")
    assert not live.exists() and target.read_text() == "again"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
