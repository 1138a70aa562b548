"""Soak for predict: thousands of images through detection + crops + model in one process.

    python -m ssrconv.benchmarks.soak_predict [--model PATH] [--images 3000] [--passes 2] [--json OUT]

The images are generated into a temporary directory (deleted afterwards) from the face chips
in ``$SSRCONV_FACES`` and the photos in ``$SSRCONV_IMAGES`` (``--faces``/``--photos``): each
source is resized, mirrored and padded into variants, so a few hundred sources make thousands
of distinct files. They go through :class:`ssrconv.predict.Predictor` (YuNet, the crop
contract, one batch per image, annotated copies written) in chunks; each chunk's records are
counted and dropped, so what stays resident is what the predict path itself keeps. RSS is read
after ``gc.collect()`` and ``malloc_trim(0)`` (otherwise it swings by ~25 MB with whether a
large photo was decoded just before). The report gives RSS after warm-up, at the end, and the
growth (target: < 5 MB), plus the median of the last quarter of the RSS samples minus that of
the second quarter (a leak keeps climbing; the swings do not), and with ``--passes N`` (default
2) the RSS at the end of each pass over the same images: the end of the last pass minus the end
of the first is the growth after a warm-up that has seen every image size. A benchmark script,
not a unit test: a few thousand images take a minute or two per pass.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from ssrconv.atomic import scratch_dir
from ssrconv.benchmarks.soak import settled_rss_bytes
from ssrconv.errors import InputError

CHUNK = 50
SAMPLES = 20


def make_images(faces: Path | None, photos: Path | None, count: int, dest: Path,
                seed: int = 0) -> list[Path]:
    """Write ``count`` image variants (resized, mirrored, padded; JPEG and PNG) of the images in
    ``faces`` and ``photos`` into ``dest``; returns their paths in processing order."""
    import cv2

    from ssrconv.reference.preprocess import list_images, read_image

    sources = []
    for directory in (faces, photos):
        if directory is not None:
            sources += list_images(directory)
    if not sources:
        raise InputError("soak_predict: no source images (set SSRCONV_FACES or SSRCONV_IMAGES, "
                         "or pass --faces/--photos)")
    rng = np.random.default_rng(seed)
    decoded: dict[Path, np.ndarray] = {}
    paths = []
    for i in range(count):
        source = sources[i % len(sources)]
        if source not in decoded:
            image = read_image(source)
            scale = min(1.0, 640 / max(image.shape[:2]))  # photos: detection-sized
            decoded[source] = cv2.resize(image, None, fx=scale, fy=scale) if scale < 1 else image
        image = decoded[source]
        scale = rng.uniform(0.6, 1.6)
        variant = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
        if rng.random() < 0.5:
            variant = variant[:, ::-1]
        pad = [int(p) for p in rng.integers(0, max(2, variant.shape[0] // 3), 4)]
        variant = cv2.copyMakeBorder(np.ascontiguousarray(variant), *pad, cv2.BORDER_CONSTANT,
                                     value=[int(v) for v in rng.integers(0, 256, 3)])
        suffix = ".png" if i % 5 == 0 else ".jpg"
        path = dest / f"{i:05d}_{source.stem[:40]}{suffix}"
        ok, encoded = cv2.imencode(suffix, variant)
        if not ok:
            raise InputError(f"{path}: could not encode the generated image")
        path.write_bytes(encoded.tobytes())
        paths.append(path)
    return paths


def soak_predict(model: str | None, images: list[Path], warmup: int, annotate_dir: Path | None,
                 progress=None, passes: int = 1) -> dict:
    """Run predict over ``images`` (``passes`` times) in this process; RSS after ``warmup``
    images, at the end, and at the end of each pass.

    RSS depends on which images were decoded last, so the fair comparison is at the same
    point of the same sequence: the end of the first pass against the end of the last."""
    from ssrconv.detect import make_detector
    from ssrconv.predict import Predictor
    from ssrconv.loading import load_runtime
    from ssrconv.targets import REFERENCE_BACKEND

    say = progress or (lambda message: None)
    runtime = load_runtime(model, backend=REFERENCE_BACKEND if model is None else None)
    predictor = Predictor(runtime, make_detector("yunet"))
    faces = failures = 0
    after_warmup = None
    samples = []
    started = time.perf_counter()
    step = max(CHUNK, len(images) // SAMPLES)
    pass_ends = []
    schedule = [(p, start) for p in range(passes) for start in range(0, len(images), CHUNK)]
    for p, start in schedule:
        if after_warmup is None and start >= warmup:
            after_warmup, warm_started = settled_rss_bytes(), time.perf_counter()
        result = predictor.run(images[start:start + CHUNK], out_dir=annotate_dir)
        faces += len(result.records)
        failures += len(result.failures)
        if annotate_dir is not None:
            for name in result.annotated:  # keep the disk flat: the write path is what counts
                os.unlink(name)
        if start % step == 0 and p == 0:
            samples.append(settled_rss_bytes())
            say(f"soak_predict: {min(start + CHUNK, len(images)):,}/{len(images):,} images, {faces:,} faces, "
                f"RSS {samples[-1] / 2**20:.1f} MB")
        if start + CHUNK >= len(images):
            pass_ends.append(settled_rss_bytes())
            say(f"soak_predict: pass {p + 1}/{passes} done, RSS {pass_ends[-1] / 2**20:.1f} MB")
    if after_warmup is None:
        after_warmup, warm_started = settled_rss_bytes(), time.perf_counter()
    end = settled_rss_bytes()
    # RSS swings by a few MB with the sizes of recent images (OpenCV's buffers, heap
    # fragmentation), so one reading against another can show growth that is not a leak.
    # A leak keeps climbing: compare the median of the last quarter of the samples with the
    # median of the second quarter.
    quarter = max(1, len(samples) // 4)
    late = (float(np.median(samples[-quarter:])) - float(np.median(samples[quarter:2 * quarter]))
            if len(samples) >= 4 else None)  # too short a run to say
    return {"model": model or "keras", "engine": runtime.engine, "images": len(images),
            "warmup_images": min(warmup, len(images)), "faces": faces, "failures": failures,
            "seconds": round(time.perf_counter() - started, 2),
            "seconds_after_warmup": round(time.perf_counter() - warm_started, 2),
            "rss_after_warmup_mb": round(after_warmup / 2**20, 2),
            "rss_end_mb": round(end / 2**20, 2),
            "growth_mb": round((end - after_warmup) / 2**20, 2),
            "late_growth_mb": None if late is None else round(late / 2**20, 2),
            "passes": passes, "rss_pass_ends_mb": [round(r / 2**20, 2) for r in pass_ends],
            "growth_between_passes_mb": (round((pass_ends[-1] - pass_ends[0]) / 2**20, 2)
                                         if passes > 1 else None),
            "rss_samples_mb": [round(s / 2**20, 2) for s in samples]}


def main(argv: list[str] | None = None) -> int:
    """Generate the images, soak predict over them, print a Markdown row (and JSON)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="an exported artifact (default: the Keras reference)")
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=300, help="images before the first RSS reading")
    parser.add_argument("--faces", type=Path, default=os.environ.get("SSRCONV_FACES"))
    parser.add_argument("--photos", type=Path, default=os.environ.get("SSRCONV_IMAGES"))
    parser.add_argument("--passes", type=int, default=2,
                        help="process the images this many times; growth = RSS at the end of the "
                             "last pass minus at the end of the first")
    parser.add_argument("--no-annotate", action="store_true", help="skip writing annotated copies")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    say = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    with scratch_dir("ssrconv-soak-predict-") as tmp:
        tmp = Path(tmp)
        (tmp / "in").mkdir()
        say(f"soak_predict: generating {args.images:,} images into {tmp / 'in'}")
        images = make_images(args.faces, args.photos, args.images, tmp / "in")
        result = soak_predict(args.model, images, args.warmup,
                              None if args.no_annotate else tmp / "annotated", progress=say,
                              passes=args.passes)
    print("| model | engine | images | warm-up | faces | RSS after warm-up (MB) | RSS at end (MB) "
          "| growth (MB) | last vs second quarter (MB) | RSS range (MB) | passes | RSS at pass ends (MB) "
          "| growth between passes (MB) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {Path(result['model']).name} | {result['engine']} | {result['images']:,} | "
          f"{result['warmup_images']:,} | {result['faces']:,} | {result['rss_after_warmup_mb']} | "
          f"{result['rss_end_mb']} | {result['growth_mb']} | {result['late_growth_mb']} | "
          f"{min(result['rss_samples_mb'])}-{max(result['rss_samples_mb'])} | {result['passes']} | "
          f"{', '.join(str(r) for r in result['rss_pass_ends_mb'])} | {result['growth_between_passes_mb']} |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["failures"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
