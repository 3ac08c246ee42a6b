"""DICOM in, DICOM-SEG out through ``predict``: every series below the input folder is one case; its SEG holds the
label map that the same volume as NIfTI gets; bad DICOM input is refused with one line before anything is written.

The models are planned on tiny synthetic datasets and given untrained (seeded) weights, as in
``test_malformed_inputs``: the plumbing is under test, not the segmentation.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("highdicom")  # the 'dicom' extra, part of the 'test' extra

import pydicom  # noqa: E402
import torch  # noqa: E402

import autoseg  # noqa: E402

import _dicom_fixtures as fx  # noqa: E402
from autoseg import api  # noqa: E402
from autoseg.cli import main  # noqa: E402
from autoseg.errors import AutosegError  # noqa: E402
from autoseg.io.dicom_case_ids import series_case_ids  # noqa: E402
from autoseg.io.dicom import read_series  # noqa: E402
from autoseg.io.dicom_series import find_series  # noqa: E402
from autoseg.io.dicom_seg import read_dicom_seg  # noqa: E402
from autoseg.io.image import read_image, write_image  # noqa: E402
from autoseg.nn.checkpoint import save_checkpoint  # noqa: E402
from autoseg.nn.unet import build_network  # noqa: E402

PREDICT = dict(configuration="3d_fullres", folds=["0"], tta=False, progress=False)


def _model(tmp_path_factory, preset: str) -> tuple[Path, str]:
    from autoseg.synthetic import PRESETS, make_dataset

    root = tmp_path_factory.mktemp(preset)
    raw = make_dataset(root / f"Task09_{preset}", PRESETS[preset])
    ws = root / "ws"
    name = api.plan(raw, ws, progress=False, preprocess=False).plans.dataset_name
    ctx = api.load_context(ws, name)
    torch.manual_seed(0)  # untrained but fixed weights: the maps of one run and the next are comparable
    net = build_network(ctx.configuration("3d_fullres").architecture, ctx.plans.input_channels("3d_fullres"),
                        len(ctx.plans.labels))
    save_checkpoint(ctx.fold("3d_fullres", "0").final_checkpoint,
                    {"model": net.state_dict(), "plans_sha256": ctx.plans_sha256})
    return ws, name


@pytest.fixture(scope="module")
def one_channel(tmp_path_factory):
    return _model(tmp_path_factory, "tiny")


def _run(argv) -> int:
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def _dciodvfy(path: Path) -> str:
    result = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True, timeout=120)
    return result.stdout + result.stderr


def test_seg_holds_the_label_map_of_the_same_volume_as_nifti(one_channel, tmp_path):
    ws, name = one_channel
    study = tmp_path / "in" / "patient" / "CT"
    files = fx.write_series(study, fx.ct_volume(), fx.oblique_grid(), rescale=(1.0, -1024.0))  # names shuffled
    image, geometry = read_series(files)
    write_image(image[0], geometry, tmp_path / "nifti_in" / "ct.nii.gz")

    api.predict(ws, name, tmp_path / "in", tmp_path / "seg", output_format="dicom-seg", **PREDICT)
    api.predict(ws, name, tmp_path / "in", tmp_path / "from_dicom", **PREDICT)
    api.predict(ws, name, tmp_path / "nifti_in", tmp_path / "from_nifti", **PREDICT)

    expected, _ = read_image([tmp_path / "from_nifti" / "ct.nii.gz"])
    assert sorted(p.name for p in (tmp_path / "seg").iterdir()) == ["patient_CT.dcm"]
    labels = read_dicom_seg(tmp_path / "seg" / "patient_CT.dcm", files)
    assert np.array_equal(labels, expected[0]) and len(np.unique(labels)) > 1
    as_nifti, nifti_geometry = read_image([tmp_path / "from_dicom" / "patient_CT.nii.gz"])
    assert np.array_equal(as_nifti[0], expected[0])
    assert np.allclose(nifti_geometry.origin, geometry.origin, atol=1e-4)
    assert np.allclose(nifti_geometry.direction, geometry.direction, atol=1e-5)
    assert np.allclose(nifti_geometry.spacing, geometry.spacing, atol=1e-5)

    seg = pydicom.dcmread(tmp_path / "seg" / "patient_CT.dcm")
    assert [s.SegmentLabel for s in seg.SegmentSequence] == list(api.load_context(ws, name).plans.labels[1:])
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("autoseg", autoseg.__version__)
    assert algorithm.AlgorithmParameters == f"dataset={name},configuration=3d_fullres,folds=0"
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (Debian package dicom3tools) not installed: the SEG was not validated")
    output = _dciodvfy(tmp_path / "seg" / "patient_CT.dcm")
    print(output)
    assert "Segmentation" in output.splitlines()[0]
    assert [line for line in output.splitlines() if line.startswith("Error")] == []


def test_case_ids_name_the_series_folders(tmp_path):
    study = fx.Study.new()
    root = tmp_path / "Study 1"
    fx.write_series(root / "a" / "b", fx.ct_volume(), study=study, description="venous")
    fx.write_series(root / "c", fx.ct_volume(seed=2), study=study, description="venous", prefix="A")
    fx.write_series(root / "c", fx.ct_volume(seed=3), study=study, description="art/phase", prefix="B")
    fx.write_series(root, fx.ct_volume(seed=4), study=study, description="top")
    fx.write_series(root / "d", fx.ct_volume(seed=5), study=study, description="same", prefix="A")
    fx.write_series(root / "d", fx.ct_volume(seed=6), study=study, description="same", prefix="B")
    series = find_series(root)
    ids = series_case_ids(series, root)
    by_uid = dict(zip((s.uid for s in series), ids))
    folder_of = {s.uid: s.files[0].parent.name + "/" + s.description for s in series}
    named = {folder_of[u]: i for u, i in by_uid.items() if not folder_of[u].startswith("d/")}
    assert named == {"b/venous": "a_b", "c/venous": "c_s3_venous", "c/art/phase": "c_s3_art-phase",
                     "Study 1/top": "Study-1"}
    same = sorted(i for u, i in by_uid.items() if folder_of[u].startswith("d/"))
    assert len(set(same)) == 2 and all(i.startswith("d_s3_same_") and len(i) == len("d_s3_same_") + 8 for i in same)
    assert series_case_ids(list(reversed(series)), root) == list(reversed(ids))  # not the order found


def test_two_series_are_two_cases(one_channel, tmp_path):
    ws, name = one_channel
    study = fx.Study.new()
    fx.write_series(tmp_path / "in", fx.ct_volume(), fx.Grid(), study=study, description="venous", prefix="V")
    fx.write_series(tmp_path / "in", fx.ct_volume(seed=5), fx.oblique_grid(), study=study, description="arterial",
                    prefix="A")
    r = api.predict(ws, name, tmp_path / "in", tmp_path / "out", output_format="dicom-seg",
                    save_probabilities=True, **PREDICT)
    assert sorted(r.written) == ["in_s3_arterial", "in_s3_venous"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "in_s3_arterial.dcm", "in_s3_arterial.npz", "in_s3_venous.dcm", "in_s3_venous.npz"]
    refs = {str(pydicom.dcmread(tmp_path / "out" / f"{c}.dcm").ReferencedSeriesSequence[0].SeriesInstanceUID)
            for c in r.written}
    assert refs == {s.uid for s in find_series(tmp_path / "in")}
    with pytest.raises(AutosegError, match="2 output file"):  # existing outputs: as for NIfTI
        api.predict(ws, name, tmp_path / "in", tmp_path / "out", output_format="dicom-seg", **PREDICT)
    again = api.predict(ws, name, tmp_path / "in", tmp_path / "out", output_format="dicom-seg", continue_=True,
                        **PREDICT)
    assert again.written == () and len(again.skipped) == 2


def _mixed(tmp_path: Path) -> Path:
    fx.write_series(tmp_path / "in" / "ct", fx.ct_volume())
    image, geometry = read_series(find_series(tmp_path / "in")[0])
    write_image(image[0], geometry, tmp_path / "in" / "other.nii.gz")
    return tmp_path / "in"


def _nifti_only(tmp_path: Path) -> Path:
    image, geometry = read_series(fx.write_series(tmp_path / "dcm", fx.ct_volume()))
    write_image(image[0], geometry, tmp_path / "in" / "case.nii.gz")
    return tmp_path / "in"


# (variant, folder writer, extra predict arguments, fragment of the one line)
BAD = [
    ("DICOM mixed with NIfTI", _mixed, {}, "holds both DICOM files and other images"),
    ("dicom-seg for NIfTI input", _nifti_only, {"output_format": "dicom-seg"}, "needs DICOM input"),
]


@pytest.mark.parametrize("variant, make, kwargs, fragment", BAD, ids=[b[0] for b in BAD])
def test_bad_dicom_input_is_one_line(one_channel, tmp_path, capsys, variant, make, kwargs, fragment):
    ws, name = one_channel
    images = make(tmp_path)
    with pytest.raises(AutosegError, match=fragment) as e:
        api.predict(ws, name, images, tmp_path / "out", **kwargs, **PREDICT)
    assert len(e.value.problems) == 1 and e.value.problems[0].startswith(f"{images}: ")
    flags = ["--output-format", kwargs["output_format"]] if kwargs else []
    assert _run(["predict", name, "-w", str(ws), "-i", str(images), "-o", str(tmp_path / "out"), "-c", "3d_fullres",
                 "-f", "0", "--no-tta", *flags]) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in err, err
    if kwargs:
        assert "--output-format dicom-seg needs DICOM input" in lines[0]
    assert not (tmp_path / "out").exists()


def test_a_model_of_two_channels_refuses_dicom(tmp_path_factory, tmp_path):
    ws, name = _model(tmp_path_factory, "multichannel")
    fx.write_series(tmp_path / "in" / "ct", fx.ct_volume())
    with pytest.raises(AutosegError) as e:
        api.predict(ws, name, tmp_path / "in", tmp_path / "out", **PREDICT)
    assert e.value.problems == (f"{tmp_path / 'in'}: this model needs 2 channels, a DICOM series gives one; "
                                f"convert the series to one image file per channel instead",)
    assert not (tmp_path / "out").exists()


def _good_and_broken(tmp_path: Path) -> Path:
    study = fx.Study.new()
    fx.write_series(tmp_path / "in" / "good", fx.ct_volume(), study=study)
    fx.write_series(tmp_path / "in" / "broken", fx.ct_volume(), study=study,
                    edit=lambda k, ds: None if k == 3 else ds)  # a slice missing
    return tmp_path / "in"


def test_a_broken_series_stops_the_run_or_is_skipped(one_channel, tmp_path, capsys):
    ws, name = one_channel
    images = _good_and_broken(tmp_path)
    out = tmp_path / "out"
    with pytest.raises(AutosegError) as e:
        api.predict(ws, name, images, out, output_format="dicom-seg", **PREDICT)
    assert len(e.value.problems) == 1 and e.value.problems[0].startswith(f"{images / 'broken'}: DICOM series ")
    assert "missing slices" in e.value.problems[0] and not out.exists()
    argv = ["predict", name, "-w", str(ws), "-i", str(images), "-o", str(out), "-c", "3d_fullres", "-f", "0",
            "--no-tta", "--output-format", "dicom-seg"]
    assert _run(argv) == 2
    err = capsys.readouterr().err
    assert len([ln for ln in err.splitlines() if ln.startswith("error: ")]) == 1 and "missing slices" in err
    assert not out.exists()
    assert _run([*argv, "--skip-bad"]) == 3
    assert sorted(p.name for p in out.iterdir()) == ["failures.json", "good.dcm"]
    failures = json.loads((out / "failures.json").read_text())["failures"]
    assert [f["case"] for f in failures] == ["broken"] and "missing slices" in failures[0]["problems"][0]


def test_cli_dicom_in_seg_out(one_channel, tmp_path, capsys):
    ws, name = one_channel
    files = fx.write_series(tmp_path / "in" / "series", fx.ct_volume(), fx.oblique_grid())
    out = tmp_path / "out"
    argv = ["predict", name, "-w", str(ws), "-i", str(tmp_path / "in"), "-o", str(out), "-c", "3d_fullres", "-f",
            "0", "--no-tta", "--output-format", "dicom-seg"]
    assert _run(argv) == 0
    assert "wrote 1 segmentation(s)" in capsys.readouterr().out
    labels = read_dicom_seg(out / "series.dcm", files)
    assert labels.shape == (6, 10, 12)
    assert _run(argv) == 2
    assert "--continue to skip them or --overwrite to replace them" in capsys.readouterr().err
    assert _run([*argv, "--overwrite"]) == 0
    assert np.array_equal(read_dicom_seg(out / "series.dcm", files), labels)
    assert sorted(p.name for p in out.iterdir()) == ["series.dcm"]  # no temporary file left beside it


def test_what_a_seg_cannot_reference_is_found_before_anything_is_written(one_channel, tmp_path):
    ws, name = one_channel
    study = fx.Study.new()
    fx.write_series(tmp_path / "in" / "a_good", fx.ct_volume(), study=study)

    def strip(k, ds):
        del ds.FrameOfReferenceUID
        return ds
    fx.write_series(tmp_path / "in" / "b_no_frame", fx.ct_volume(), study=study, edit=strip)
    with pytest.raises(AutosegError) as e:
        api.predict(ws, name, tmp_path / "in", tmp_path / "out", output_format="dicom-seg", **PREDICT)
    assert len(e.value.problems) == 1 and "no FrameOfReferenceUID" in e.value.problems[0]
    assert e.value.problems[0].startswith(f"{tmp_path / 'in' / 'b_no_frame'}: DICOM series ")
    assert not (tmp_path / "out").exists()
    r = api.predict(ws, name, tmp_path / "in", tmp_path / "out", **PREDICT)  # a label map needs no reference
    assert sorted(r.written) == ["a_good", "b_no_frame"]


def test_regions_of_interest_are_refused_for_dicom(one_channel, tmp_path):
    ws, name = one_channel
    fx.write_series(tmp_path / "in" / "ct", fx.ct_volume())
    (tmp_path / "roi").mkdir()
    with pytest.raises(AutosegError, match="region-of-interest masks are not supported for DICOM input") as e:
        api.predict(ws, name, tmp_path / "in", tmp_path / "out", roi_dir=tmp_path / "roi", **PREDICT)
    assert len(e.value.problems) == 1 and "roi_dir" in e.value.problems[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_python_api_segments_a_series_as_predict_does(one_channel, tmp_path, modality):
    """``api.predict_series`` on an axial MR or an oblique CT series (files shuffled on disk): the label map of
    ``predict`` on the same volume as NIfTI, on the series' grid; written as a SEG, read back the same."""
    from autoseg.io.dicom_seg import write_dicom_seg

    ws, name = one_channel
    volume, grid = (fx.mr_volume(), fx.Grid()) if modality == "MR" else (fx.ct_volume(), fx.oblique_grid())
    files = fx.write_series(tmp_path / "in" / modality, volume, grid, modality=modality)
    image, geometry = read_series(files)
    write_image(image[0], geometry, tmp_path / "nifti_in" / "case.nii.gz")
    api.predict(ws, name, tmp_path / "nifti_in", tmp_path / "from_nifti", **PREDICT)
    expected, _ = read_image([tmp_path / "from_nifti" / "case.nii.gz"])

    predictor = api.load_predictor(ws, name, "3d_fullres", ["0"], mirror=False)
    prediction, grid_geometry, series = api.predict_series(predictor, tmp_path / "in")
    assert np.array_equal(prediction.segmentation, expected[0]) and len(np.unique(expected)) > 1
    assert grid_geometry == geometry and series.modality == modality
    labels = {k: v for k, v in enumerate(api.load_context(ws, name).plans.labels) if k}
    seg = write_dicom_seg(prediction.segmentation, series, labels, {"version": autoseg.__version__},
                          tmp_path / "s.dcm")
    assert np.array_equal(read_dicom_seg(seg, files), expected[0])
