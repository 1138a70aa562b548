"""predict: detector + crop + model on real photos and a video, on every exported backend."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest

from ssrconv.targets import EXPORTED_BY_ALL, TARGETS


@pytest.fixture(scope="module")
def group_photo(images_dir):
    return images_dir / "group_t1.jpg"


def test_yunet_finds_all_six_faces_haar_fewer(group_photo, assets_dir):
    from ssrconv.detect import make_detector
    from ssrconv.reference.preprocess import read_image

    image = read_image(group_photo)
    yunet = make_detector("yunet").detect(image)
    assert len(yunet) == 6 and all(f.score > 0.8 for f in yunet)
    haar = make_detector("haar")
    assert haar.is_fallback and len(haar.detect(image)) < 6


@pytest.mark.slow
@pytest.mark.parametrize("key", EXPORTED_BY_ALL)
def test_every_backend_agrees_with_reference_on_the_group_photo(export_dir, group_photo, key, tmp_path,
                                                                keras_reference):
    from ssrconv.detect import make_detector
    from ssrconv.predict import Predictor
    from ssrconv.loading import load_runtime

    artifact = export_dir / TARGETS[key].filename("age-gender")
    predictor = Predictor(load_runtime(artifact), make_detector("yunet"),
                          reference=keras_reference)
    result = predictor.run([group_photo], out_dir=tmp_path)
    assert result.ok and len(result.records) == 6
    budget = TARGETS[key].budget
    age_diff = np.abs([r["age_diff"] for r in result.records])
    if budget.max_age is not None:
        assert age_diff.max() <= budget.max_age
    if budget.mean_age is not None:
        assert age_diff.mean() <= budget.mean_age
    if budget.p99_age is not None:
        assert np.percentile(age_diff, 99) <= budget.p99_age
    agree = [(r["p_male"] > 0.5) == (r["ref_p_male"] > 0.5) for r in result.records]
    assert np.mean(agree) >= (budget.min_gender_agreement or 1.0)
    annotated = cv2.imread(result.annotated[0])
    assert annotated is not None and annotated.shape == cv2.imread(str(group_photo)).shape


def test_directory_with_corrupt_and_non_image_files(group_photo, tmp_path, assets_dir, images_dir,
                                                     cli):
    photos = tmp_path / "my photos ü"
    photos.mkdir()
    shutil.copy(group_photo, photos / "a_group.jpg")
    shutil.copy(images_dir / "astronaut.png", photos / "b_astronaut.png")
    (photos / "c_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    (photos / "d_notes.txt").write_text("not an image")
    out = tmp_path / "out"
    result = cli("predict", str(photos), "--out", str(out))
    assert result.returncode == 1
    data = json.loads(result.stdout)
    assert {r["source"].split("/")[-1] for r in data["faces"]} == {"a_group.jpg", "b_astronaut.png"}
    assert len([r for r in data["faces"] if r["source"].endswith("a_group.jpg")]) == 6
    failed = sorted(f["source"].split("/")[-1] for f in data["failures"])
    assert failed == ["c_corrupt.jpg", "d_notes.txt"]
    assert "Traceback" not in result.stderr and "could not be processed" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a_group_annotated.jpg",
                                                     "b_astronaut_annotated.png", "predictions.json"]


def test_video_is_processed_frame_by_frame(group_photo, tmp_path, assets_dir, cli):
    image = cv2.imread(str(group_photo))
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 5,
                             (image.shape[1], image.shape[0]))
    for shift in range(6):
        writer.write(np.roll(image, shift * 8, axis=1))
    writer.release()
    out = tmp_path / "out"
    result = cli("predict", str(video), "--every", "2", "--format", "csv", "--out", str(out))
    assert result.returncode == 0, result.stderr
    rows = result.stdout.strip().splitlines()[1:]
    frames = sorted({int(r.split(",")[1]) for r in rows})
    assert frames == [0, 2, 4]
    assert len(rows) >= 15  # (nearly) all six faces in each processed frame
    capture = cv2.VideoCapture(str(out / "clip_annotated.mp4"))
    assert capture.isOpened() and int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 3


def test_predict_bad_options(tmp_path, group_photo, cli):
    result = cli("predict", str(group_photo), "--backend", "onnx")
    assert result.returncode == 2 and "needs --model" in result.stderr
    result = cli("predict", str(group_photo), "--model", str(tmp_path / "missing.onnx"))
    assert result.returncode == 1 and "missing.onnx: no such file" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
