"""The bad-input matrix: every command that reads an artifact, fed broken or foreign files,
answers with one clear line naming the file, a non-zero exit code and no traceback.
(docs/BAD_INPUTS.md lists the cases and their outcomes.)"""

from __future__ import annotations

import shutil

import numpy as np
import pytest


def _make(kind: str, tmp_path, assets_dir, export_dir):
    rng = np.random.default_rng(0)
    fp32_onnx = export_dir / "ssrnet_age_gender_fp32.onnx"
    fp32_tflite = export_dir / "ssrnet_age_gender_fp32.tflite"
    files = {
        "empty.onnx": lambda p: p.write_bytes(b""),
        "random.onnx": lambda p: p.write_bytes(rng.bytes(3000)),
        "truncated.onnx": lambda p: p.write_bytes(fp32_onnx.read_bytes()[:50_000]),
        "tflite-bytes.onnx": lambda p: p.write_bytes(fp32_tflite.read_bytes()),
        "yunet.onnx": lambda p: shutil.copy(assets_dir / "face_detection_yunet_2023mar.onnx", p),
        "empty.tflite": lambda p: p.write_bytes(b""),
        "random.tflite": lambda p: p.write_bytes(rng.bytes(3000)),
        "truncated.tflite": lambda p: p.write_bytes(fp32_tflite.read_bytes()[:40_000]),
        "empty.mlpackage": lambda p: p.mkdir(),
        "model.pt": lambda p: p.write_bytes(b"\x80\x04pickle"),
        "missing.onnx": lambda p: None,
    }
    path = tmp_path / "dir with spaces é" / kind
    path.parent.mkdir(exist_ok=True)
    files[kind](path)
    return path


KINDS = ["empty.onnx", "random.onnx", "truncated.onnx", "tflite-bytes.onnx", "yunet.onnx",
         "empty.tflite", "random.tflite", "truncated.tflite", "empty.mlpackage", "model.pt",
         "missing.onnx"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("command", ["parity", "eval", "predict"])
def test_bad_artifact(kind, command, tmp_path, assets_dir, export_dir, faces_dir, images_dir, cli):
    path = _make(kind, tmp_path, assets_dir, export_dir)
    args = {"parity": ["parity", "--model", str(path), "--faces", str(faces_dir), "--limit", "4",
                       "--synthetic", "0"],
            "eval": ["eval", str(faces_dir), "--model", str(path)],
            "predict": ["predict", str(images_dir / "astronaut.png"), "--model", str(path)]}[command]
    result = cli(*args)
    err = result.stderr
    assert result.returncode != 0
    error_lines = [line for line in err.splitlines() if line.startswith("ssrconv: error:")]
    assert len(error_lines) == 1 and path.name in error_lines[0], err
    assert "Traceback" not in err


@pytest.mark.parametrize("pixels", ["nan", "inf"])
def test_nan_and_inf_pixels_are_refused(pixels):
    from ssrconv.errors import InputError
    from ssrconv.reference.preprocess import to_bgr_uint8

    image = np.zeros((8, 8, 3), np.float32)
    image[0, 0, 0] = float(pixels)
    with pytest.raises(InputError, match="NaN or Inf"):
        to_bgr_uint8(image)


def test_huge_and_tiny_images_in_predict(tmp_path, assets_dir, cli):
    import cv2

    (tmp_path / "tiny.png").write_bytes(cv2.imencode(".png", np.zeros((1, 1, 3), np.uint8))[1].tobytes())
    big = np.full((6000, 8000), 128, np.uint8)  # 48 MP grayscale: detector downsizes first
    (tmp_path / "huge.png").write_bytes(cv2.imencode(".png", big)[1].tobytes())
    rgba16 = np.zeros((40, 40, 4), np.uint16)
    (tmp_path / "rgba16.png").write_bytes(cv2.imencode(".png", rgba16)[1].tobytes())
    result = cli("predict", tmp_path)
    assert result.returncode == 0, result.stderr
    assert '"failures": []' in result.stdout


def test_a_failing_converter_tool_is_one_line_naming_it(tmp_path):
    """converters.tool.run_tool, which pnnx, MNN's converter, tf2onnx and Vela run through:
    a non-zero exit, missing output files and a timeout each end in one ConverterError line
    naming the tool and quoting its last word (or the last line naming an error)."""
    import sys

    from ssrconv.converters.tool import run_tool
    from ssrconv.errors import ConverterError

    py = sys.executable
    with pytest.raises(ConverterError, match=r"^toolx failed \(exit 3\): last words$"):
        run_tool([py, "-c", "import sys; print('first'); print('last words'); sys.exit(3)"],
                 "toolx", 60)
    with pytest.raises(ConverterError, match=r"failed \(exit 0\): Error: no graph$"):
        run_tool([py, "-c", "print('Error: no graph'); print('progress 100%')"], "tooly", 60,
                 produced=lambda: (tmp_path / "out.bin").is_file(),
                 says=lambda line: "rror" in line)
    with pytest.raises(ConverterError, match=r"^toolz did not finish in 0.5 s$"):
        run_tool([py, "-c", "import time; time.sleep(30)"], "toolz", 0.5)
    assert run_tool([py, "-c", "print('ok')"], "tool", 60).stdout == "ok\n"
