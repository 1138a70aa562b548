"""Smoke tests of the soak benchmark scripts (the real runs are benchmarks, see docs/BAD_INPUTS.md)."""

from __future__ import annotations

import hashlib
import json

from ssrconv.benchmarks import soak_predict


def test_generated_images_are_distinct_decodable_variants(tmp_path, faces_dir, images_dir):
    from ssrconv.reference.preprocess import read_image

    paths = soak_predict.make_images(faces_dir, images_dir, 30, tmp_path)
    assert len(paths) == 30 and sorted(tmp_path.iterdir()) == sorted(paths)
    assert len({hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}) == 30
    assert {p.suffix for p in paths} == {".jpg", ".png"}
    for path in paths:
        assert read_image(path).ndim == 3


def test_soak_predict_smoke(tmp_path, export_dir, faces_dir, images_dir, capsys):
    report = tmp_path / "soak.json"
    code = soak_predict.main(["--model", str(export_dir / "ssrnet_age_gender_fp32.tflite"),
                              "--images", "12", "--warmup", "4", "--faces", str(faces_dir),
                              "--photos", str(images_dir), "--json", str(report)])
    assert code == 0
    result = json.loads(report.read_text())
    assert result["images"] == 12 and result["failures"] == 0 and result["faces"] >= 6
    assert result["engine"].startswith("tflite")
    assert 0 < result["rss_after_warmup_mb"] and 0 < result["rss_end_mb"]
    assert abs(result["growth_mb"] - (result["rss_end_mb"] - result["rss_after_warmup_mb"])) < 0.02
    ends = result["rss_pass_ends_mb"]  # default: two passes over the same images
    assert result["passes"] == 2 and len(ends) == 2
    assert abs(result["growth_between_passes_mb"] - (ends[1] - ends[0])) < 0.02
    assert "| ssrnet_age_gender_fp32.tflite | tflite" in capsys.readouterr().out
