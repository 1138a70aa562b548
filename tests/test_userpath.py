"""A new user's path (issue 16): phone photos with EXIF orientation, inputs that must not hang or
pass silently, the sample photos as assets, full photos as faces, report file modes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image


# EXIF Orientation -> the transpose that makes the stored (sideways) image from the upright one
# (what a phone writes); a viewer, and ssrconv, undo it.
STORED_FROM_UPRIGHT = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90,
                       8: Image.Transpose.ROTATE_270}


def _rotated_copy(source, dest, orientation: int, crop_wide: bool = True):
    """``source`` stored rotated with EXIF Orientation=``orientation``; also returns the upright
    RGB image. Cropped to a non-square frame, so a missed rotation changes the shape too."""
    upright = Image.open(source).convert("RGB")
    if crop_wide:
        upright = upright.crop((0, 0, upright.width, upright.height * 3 // 4))
    exif = Image.Exif()
    exif[0x0112] = orientation
    upright.transpose(STORED_FROM_UPRIGHT[orientation]).save(dest, exif=exif, quality=95)
    return upright


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_read_image_applies_exif_orientation(images_dir, tmp_path, orientation):
    from ssrconv.reference.preprocess import read_image

    path = tmp_path / f"astronaut_o{orientation}.jpg"
    upright = np.asarray(_rotated_copy(images_dir / "astronaut.png", path, orientation))[..., ::-1]
    image = read_image(path)
    assert image.shape == upright.shape  # (384, 512, 3): the displayed frame, not the stored one
    assert np.abs(image.astype(int) - upright).mean() < 3  # JPEG noise only


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_rotated_astronaut_predicts_like_upright(images_dir, tmp_path, cli, assets_dir, orientation):
    photos = tmp_path / "photos"
    photos.mkdir()
    # PNG (eXIf chunk, which OpenCV honours too): lossless, so the only difference between the
    # two files is the orientation. JPEG copies differ by re-encoding noise (up to 1.1 y here).
    upright = _rotated_copy(images_dir / "astronaut.png", photos / "rotated.png", orientation)
    upright.save(photos / "upright.png")
    out = tmp_path / "out"
    result = cli("predict", photos, "--out", out)
    assert result.returncode == 0, result.stderr
    faces = {r["source"].split("/")[-1]: r for r in json.loads(result.stdout)["faces"]}
    assert set(faces) == {"rotated.png", "upright.png"}  # one face each
    rotated, straight = faces["rotated.png"], faces["upright.png"]
    assert straight["gender"] == rotated["gender"] == "F"  # sideways she came out male, 33.9 y
    assert rotated["age"] == straight["age"] and rotated["box"] == straight["box"]  # displayed frame
    annotated = Image.open(out / "rotated_annotated.png")
    assert annotated.size == upright.size  # the annotated copy is upright


def test_named_pipe_device_and_directory_are_refused_without_reading(tmp_path, capsys):
    from ssrconv.errors import InputError
    from ssrconv.reference.preprocess import read_image

    fifo = tmp_path / "stuck.jpg"
    os.mkfifo(fifo)
    folder = tmp_path / "folder.jpg"
    folder.mkdir()
    for path, words in ((fifo, "named pipe"), ("/dev/zero", "device"), (folder, "directory")):
        result: list = []
        # a read of the pipe would block this thread forever: give it a deadline
        worker = threading.Thread(target=lambda: result.append(_catch(read_image, path)), daemon=True)
        worker.start()
        worker.join(10)
        assert not worker.is_alive(), f"read_image({path}) hangs"
        assert isinstance(result[0], InputError) and words in str(result[0])


def _catch(fn, *args):
    try:
        return fn(*args)
    except Exception as err:  # the test inspects it
        return err


def test_predict_refuses_a_named_pipe_in_one_line(tmp_path, assets_dir):
    # a subprocess with a deadline: main() sets signal handlers (main thread only), and a
    # reader blocked on the pipe could not be interrupted in-process
    fifo = tmp_path / "stuck.jpg"
    os.mkfifo(fifo)
    try:
        result = subprocess.run([sys.executable, "-m", "ssrconv.cli", "predict", str(fifo)],
                                capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("ssrconv predict on a named pipe hangs")
    assert result.returncode == 1
    failures = json.loads(result.stdout)["failures"]
    assert len(failures) == 1 and "named pipe" in failures[0]["error"]
    assert "1 of the inputs could not be processed" in result.stderr


def test_predict_on_an_empty_directory_is_an_error(tmp_path, cli, assets_dir):
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    (empty / ".hidden.jpg").write_bytes(b"")  # hidden files are not inputs
    result = cli("predict", empty)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [f"ssrconv: error: no image or video files in {empty}"]


# ------------------------------------------------------------------ photos as faces
@pytest.fixture(scope="module")
def photos_dir(tmp_path_factory, assets_dir):
    """A user's directory of full photos: the two samples (6 + 1 faces)."""
    import shutil

    root = tmp_path_factory.mktemp("photos")
    for name in ("t1.jpg", "astronaut.png"):
        shutil.copy(assets_dir / name, root / name)
    return root


def test_dev_chips_all_stay_chips_and_are_read_as_before(faces_dir):
    from ssrconv.reference.preprocess import load_faces

    auto = load_faces(faces_dir)
    forced = load_faces(faces_dir, kind="chips")
    assert auto.origin["chips"] == auto.origin["files"] == len(auto) == 300
    assert auto.origin["photos"] == 0 and auto.origin["labelled"] == 300
    assert np.array_equal(auto.inputs, forced.inputs) and auto.names == forced.names
    assert np.array_equal(auto.ages, forced.ages, equal_nan=True)


def test_a_directory_of_photos_gives_every_detected_face(photos_dir):
    from ssrconv.reference.preprocess import CHIP_RULE, crop_face, load_faces, read_image
    from ssrconv.detect import YuNetDetector

    faces = load_faces(photos_dir)
    # before: each whole photo was taken as one chip, 2 "faces"
    assert len(faces) == 7 and faces.origin["photos"] == 2 and faces.origin["chips"] == 0
    assert faces.names == ["astronaut.png#0"] + [f"t1.jpg#{i}" for i in range(6)]
    assert faces.origin["decided_by"] == CHIP_RULE and "2 files" in faces.describe()
    assert not np.isfinite(faces.ages).any()  # unlabelled, still usable for parity
    image = read_image(photos_dir / "astronaut.png")
    (face,) = YuNetDetector().detect(image)
    assert np.array_equal(faces.inputs[0], crop_face(image, face.box))  # the one contract
    assert len(load_faces(photos_dir, kind="chips")) == 2  # forced: the old reading


def test_labels_csv_beside_photos(photos_dir, tmp_path):
    import shutil

    from ssrconv.errors import InputError
    from ssrconv.reference.preprocess import load_faces

    for name in ("t1.jpg", "astronaut.png"):
        shutil.copy(photos_dir / name, tmp_path / name)
    (tmp_path / "labels.csv").write_text("file,age,gender\nastronaut.png,42,F\nt1.jpg,30,M\n"
                                         "t1.jpg#2,25,male\n")
    faces = load_faces(tmp_path)
    labelled = {n: (a, m) for n, a, m in zip(faces.names, faces.ages, faces.is_male) if np.isfinite(a)}
    # a per-file label cannot say which of t1.jpg's 6 faces it is: only the #2 row applies there
    assert labelled == {"astronaut.png#0": (42.0, 0.0), "t1.jpg#2": (25.0, 1.0)}
    (tmp_path / "labels.csv").write_text("file,age,gender\nastronaut.png,42,X\n")
    with pytest.raises(InputError, match=r"labels.csv:2: gender 'X'"):
        load_faces(tmp_path)


def test_calibration_from_a_directory_of_photos(photos_dir):
    from ssrconv.calibration import CalibrationSet

    calibration = CalibrationSet.from_dir(photos_dir)
    assert len(calibration) == 7
    assert calibration.describe()["photos"] == 2 and calibration.describe()["files"] == 2


@pytest.fixture(scope="module")
def tflite_fp32(exported):
    return exported("tflite-fp32").path


def test_parity_with_no_faces_runs_on_the_sample_photos(tflite_fp32, tmp_path, cli, monkeypatch):
    monkeypatch.delenv("SSRCONV_FACES", raising=False)
    report = tmp_path / "parity.json"
    result = cli("parity", "--model", tflite_fp32, "--json", report)
    assert result.returncode == 0, result.stderr
    assert "no --faces and no SSRCONV_FACES: using the built-in sample photos" in result.stderr
    data = json.loads(report.read_text())
    assert data["faces_dir"].endswith("t1.jpg, astronaut.png: 7 faces from 2 files")
    assert "7 real faces" in result.stdout


def test_parity_on_a_directory_of_photos_counts_their_faces(tflite_fp32, photos_dir, cli):
    result = cli("parity", "--model", tflite_fp32, "--faces", photos_dir)
    assert result.returncode == 0, result.stderr
    assert "7 real faces" in result.stdout
    assert f"faces: {photos_dir}: 7 faces from 2 files" in result.stderr


# ------------------------------------------------------------------ progress
def test_predict_over_a_directory_prints_no_line_per_file(images_dir, tmp_path, cli, assets_dir):
    import shutil

    for i in range(3):
        shutil.copy(images_dir / "astronaut.png", tmp_path / f"a{i}.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    result = cli("predict", tmp_path)
    assert result.returncode == 1 and len(json.loads(result.stdout)["faces"]) == 3
    # not a TTY: no bar, no per-file lines; one line for the skipped file and the error
    assert result.stderr.strip().splitlines() == [
        f"skipped: {tmp_path / 'broken.jpg'}: not a decodable image (JPEG, PNG, BMP, WebP, TIFF)",
        "ssrconv: error: 1 of the inputs could not be processed (see 'failures')"]


def test_progress_bar_draws_on_a_terminal_only(monkeypatch, capsys):
    from ssrconv.progress import progress

    monkeypatch.setenv("SSRCONV_PROGRESS", "1")
    assert list(progress(range(3), desc="reading")) == [0, 1, 2]
    assert "reading" in capsys.readouterr().err
    monkeypatch.delenv("SSRCONV_PROGRESS")
    assert list(progress(range(3), desc="reading")) == [0, 1, 2]
    assert capsys.readouterr().err == ""  # pytest's stderr is not a TTY


# ------------------------------------------------------------------ report modes
def test_reports_get_the_artifacts_mode_not_0600(tmp_path):
    from ssrconv.atomic import write_atomic

    old = os.umask(0o022)
    try:
        write_atomic(tmp_path / "parity.json", "{}\n")
        write_atomic(tmp_path / "bench.png", b"\x89PNG")
        (tmp_path / "artifact.onnx").write_bytes(b"x")  # how converters write artifacts
        os.umask(0o077)
        write_atomic(tmp_path / "private.md", "x")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == {"parity.json": 0o644, "bench.png": 0o644, "artifact.onnx": 0o644,
                     "private.md": 0o600}
    assert (tmp_path / "parity.json").read_text() == "{}\n"


def test_predict_writes_predictions_and_annotated_copies_0644(images_dir, tmp_path, cli, assets_dir):
    old = os.umask(0o022)
    try:
        result = cli("predict", images_dir / "astronaut.png", "--out", tmp_path / "out")
    finally:
        os.umask(old)
    assert result.returncode == 0, result.stderr
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "out").iterdir()}
    assert modes == {"astronaut_annotated.png": 0o644, "predictions.json": 0o644}


# ------------------------------------------------------------------ the users' CI template
def test_ci_template_passes_zizmor():
    """zizmor (test extra) finds nothing: read-only token, no persisted credentials, actions
    pinned by commit hash. Offline: no GitHub API lookups."""
    from pathlib import Path

    template = Path(__file__).parent.parent / ".github" / "workflows" / "ssrconv-parity.yml"
    zizmor = Path(sys.executable).parent / "zizmor"
    result = subprocess.run([str(zizmor), "--offline", "--no-progress", str(template)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No findings to report" in result.stdout + result.stderr
    text = template.read_text()
    assert "permissions:\n  contents: read" in text
    assert text.count("persist-credentials: false") == text.count("actions/checkout@") == 3


# ------------------------------------------------------------------ eval figures for the model card
class _FixedRuntime:
    backend = engine = "fixed"
    path = None
    heads = ("age", "p_male")

    def __init__(self, age, p_male):
        self.age, self.p_male = np.asarray(age, np.float32), np.asarray(p_male, np.float32)

    def run(self, batch):
        n = len(batch)
        return {"age": self.age[:n], "p_male": self.p_male[:n]}


def test_eval_reports_rmse_bands_and_raw_p_male():
    from ssrconv.evaluate import evaluate, render_summary
    from ssrconv.reference.preprocess import FaceSet

    ages = [10, 20, 40, 50, 70, np.nan]
    faces = FaceSet(names=list("abcdef"), inputs=np.zeros((6, 64, 64, 3), np.float32),
                    ages=np.array(ages, float), is_male=np.array([1, 0, 1, 0, 1, np.nan], float))
    runtime = _FixedRuntime([16, 23, 36, 50, 58, 30], [1.04, 0.2, 0.7, -0.01, 0.4, 0.5])
    s = evaluate(runtime, faces)["summary"]
    assert s["age_mae_all"] == pytest.approx((6 + 3 + 4 + 0 + 12) / 5)
    assert s["age_rmse_all"] == pytest.approx(np.sqrt((36 + 9 + 16 + 0 + 144) / 5))
    assert s["age_rmse_adults"] == pytest.approx(np.sqrt((9 + 16 + 0 + 144) / 4))
    assert {b: v["mae"] for b, v in s["age_bands"].items()} == {
        "0-15": 6.0, "16-30": 3.0, "31-45": 4.0, "46-60": 0.0, "61+": 12.0}
    assert s["age_bands"]["61+"]["mean_signed_error"] == -12.0  # the elderly under-estimated
    assert s["age_bands"]["0-15"]["mean_signed_error"] == 6.0
    assert s["predicted_age_min"] == 16.0
    assert s["p_male_raw_max"] == pytest.approx(1.04) and s["p_male_raw_outside_0_1"] == 2
    assert s["gender_accuracy_all"] == pytest.approx(4 / 5)
    assert "age RMSE" in render_summary(s) and "61+ 12.0 y (1)" in render_summary(s)


def test_predict_shows_p_male_clipped_to_0_1():
    from ssrconv.detect import Face
    from ssrconv.predict import Predictor

    class _Detector:
        def detect(self, image):
            return [Face((10, 10, 30, 30), 0.9), Face((60, 10, 30, 30), 0.9)]

    predictor = Predictor(_FixedRuntime([30, 40], [1.05, -0.02]), _Detector(),
                          reference=_FixedRuntime([30, 40], [1.0, 0.0]))
    records = predictor.faces_of(np.zeros((100, 100, 3), np.uint8), "x.jpg")
    assert [r["p_male"] for r in records] == [1.0, 0.0]
    assert [r["gender"] for r in records] == ["M", "F"]
    assert [r["p_male_diff"] for r in records] == pytest.approx([0.05, -0.02], abs=1e-6)  # raw


def test_model_card_is_generated_for_all_seven_weight_sets():
    from pathlib import Path

    card = (Path(__file__).parent.parent / "docs" / "MODEL_CARD.md").read_text()
    assert "generated by `make model-card`" in card
    for name in ("age-imdb", "age-wiki", "age-morph2", "age-megaage-asian",
                 "gender-imdb", "gender-wiki", "gender-morph2"):
        assert f"| {name} |" in card, name
    for words in ("RMSE", "MAE 61+", "P(male) above 1 before clipping", "IMDB-WIKI", "MORPH",
                  "MegaAge"):
        assert words in card
