"""Registry of downloadable assets (pretrained weights, face detector, two sample photographs),
sha256-checked.

Resolution order for a registry name (first hit wins):

1. an explicit file path given by the caller (still hash-checked when it is a registry file name);
2. the directory named by ``SSRCONV_ASSETS`` (an offline mirror, same file names as upstream);
3. the cache directory ``SSRCONV_CACHE`` (default ``~/.cache/ssrconv``);
4. a download into the cache: from ``SSRCONV_MIRROR_URL`` + file name when that is set,
   else from the original URL. Downloads go to a temp file, are verified, then renamed.

The sha256 is checked on every load, wherever the file came from.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ssrconv.errors import AssetError, WeightsError

_SSR = "https://github.com/shamangary/SSR-Net/raw/master/pre-trained"
_SSR_DIR = "ssrnet_3_3_3_64_1.0_1.0/ssrnet_3_3_3_64_1.0_1.0"
DOWNLOAD_TIMEOUT_S = 30


@dataclass(frozen=True)
class Asset:
    """One downloadable file: where it comes from and what it must hash to."""

    name: str
    filename: str
    url: str
    sha256: str
    kind: str  # "age", "gender", "detector", "config", "sample"
    description: str
    licence: str = "Apache-2.0"


ASSETS: dict[str, Asset] = {
    a.name: a
    for a in (
        Asset("age-imdb", "ssrnet_age_imdb.h5", f"{_SSR}/imdb/{_SSR_DIR}.h5",
              "f51ac230a68bafdcd9699160f01e4d67a78232419ebcfae8622e0638e6dd4ca3", "age",
              "SSR-Net age, trained on IMDB"),
        Asset("age-wiki", "ssrnet_age_wiki.h5", f"{_SSR}/wiki/{_SSR_DIR}.h5",
              "f8b677f1a61fcf1233de0bd942f3172b1397fcbfe0f2784220154af1faf833e0", "age",
              "SSR-Net age, trained on WIKI"),
        Asset("age-morph2", "ssrnet_age_morph2.h5", f"{_SSR}/morph2/{_SSR_DIR}.h5",
              "0ad001c42cc2425ffaebd7d374983eba5c89e4f695ab10431c4c95573dc69f4d", "age",
              "SSR-Net age, trained on MORPH2"),
        Asset("age-megaage-asian", "ssrnet_age_megaage_asian.h5",
              f"{_SSR}/megaface_asian/{_SSR_DIR}.h5",
              "4bc9348a8ee89dc21d16a4e06a994e287650d068eb9f789578698c7377a07ef7", "age",
              "SSR-Net age, trained on MegaAge-Asian"),
        Asset("gender-imdb", "ssrnet_gender_imdb.h5", f"{_SSR}/imdb_gender_models/{_SSR_DIR}.h5",
              "e295148efe9c282a27ebd69a64f6495b1b280728141047866ff81001089b1767", "gender",
              "SSR-Net gender P(male), trained on IMDB"),
        Asset("gender-wiki", "ssrnet_gender_wiki.h5", f"{_SSR}/wiki_gender_models/{_SSR_DIR}.h5",
              "2d15bfa72869526d1e2b80385157e34a55fb5a4b184bbac5ea56d623141d7e8c", "gender",
              "SSR-Net gender P(male), trained on WIKI"),
        Asset("gender-morph2", "ssrnet_gender_morph2.h5",
              f"{_SSR}/morph_gender_models/{_SSR_DIR}.h5",
              "da8f77eadb15653360bde466691eb77516e4c5e0ba5b603959b4c27aa86eeff5", "gender",
              "SSR-Net gender P(male), trained on MORPH2"),
        Asset("original-config", "ssrnet_age_original_keras2.json", f"{_SSR}/wiki/{_SSR_DIR}.json",
              "8d16a2013c94863f6c6007de6ab46c2679e605ee1c9f32a618a0ccefbbac10b0", "config",
              "the original Keras 2 model config (read as data, never deserialized)"),
        Asset("yunet", "face_detection_yunet_2023mar.onnx",
              "https://github.com/opencv/opencv_zoo/raw/main/models/face_detection_yunet/"
              "face_detection_yunet_2023mar.onnx",
              "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4", "detector",
              "YuNet face detector (cv2.FaceDetectorYN), 640x640"),
        # The built-in faces of a first run with no data of one's own (parity, make demo): 7 faces.
        Asset("sample-t1", "t1.jpg",
              "https://github.com/deepinsight/insightface/raw/master/python-package/insightface/"
              "data/images/t1.jpg",
              "47f682e945b659f93a9e490b9c9c4a2a864abe64dace9e1a2893845ddfd69489", "sample",
              "group photograph, 6 faces (insightface package sample data)", licence="MIT"),
        Asset("sample-astronaut", "astronaut.png",
              "https://github.com/scikit-image/scikit-image/raw/main/skimage/data/astronaut.png",
              "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5", "sample",
              "astronaut Eileen Collins, 1 face (NASA; scikit-image sample data)",
              licence="public domain"),
    )
}
SAMPLE_PHOTOS = tuple(name for name, a in ASSETS.items() if a.kind == "sample")
SAMPLE_FACES = 7  # YuNet finds 6 in t1.jpg and 1 in astronaut.png

DEFAULT_AGE_WEIGHTS = "age-wiki"
DEFAULT_GENDER_WEIGHTS = "gender-wiki"


@dataclass(frozen=True)
class ResolvedAsset:
    """A file on disk, where it was found, and its verified sha256."""

    path: Path
    source: str  # "path", "SSRCONV_ASSETS", "cache", "download"
    sha256: str
    asset: Asset | None  # None for a user file that is not a registry file


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def assets_dir() -> Path | None:
    """The offline mirror directory from ``SSRCONV_ASSETS``, or None when unset."""
    value = os.environ.get("SSRCONV_ASSETS")
    return Path(value).expanduser() if value else None


def cache_dir() -> Path:
    """The download cache: ``SSRCONV_CACHE`` or ``~/.cache/ssrconv``."""
    value = os.environ.get("SSRCONV_CACHE")
    return Path(value).expanduser() if value else Path.home() / ".cache" / "ssrconv"


def get_asset(name: str) -> Asset:
    """The registry entry called ``name``; an AssetError listing the known names otherwise."""
    try:
        return ASSETS[name]
    except KeyError:
        known = ", ".join(ASSETS)
        raise AssetError(f"unknown asset {name!r}: known names are {known}") from None


def _verified(path: Path, asset: Asset, source: str) -> ResolvedAsset:
    actual = sha256_of(path)
    if actual != asset.sha256:
        raise AssetError(
            f"{path}: sha256 mismatch for {asset.name} (expected {asset.sha256}, got {actual}); "
            "the file is corrupt or not the published one: delete it or replace it with the original"
        )
    return ResolvedAsset(path=path, source=source, sha256=actual, asset=asset)


def locate(name: str) -> tuple[Path | None, str]:
    """Where ``name`` would load from without downloading: (path or None, source label)."""
    asset = get_asset(name)
    mirror = assets_dir()
    if mirror is not None and (mirror / asset.filename).is_file():
        return mirror / asset.filename, "SSRCONV_ASSETS"
    cached = cache_dir() / asset.filename
    if cached.is_file():
        return cached, "cache"
    return None, "download"


def resolve(name_or_path: str | os.PathLike, *, download: bool = True) -> ResolvedAsset:
    """Find a registry asset (by name) or a user file (by path), verify it, return where it is.

    A path whose file name is a registry file name is checked against that entry's hash, so a
    copied-and-corrupted ``ssrnet_age_wiki.h5`` is caught too. Any other existing path is taken
    as a user file (its hash is computed and reported, there is nothing to compare it with).
    """
    text = os.fspath(name_or_path)
    if text in ASSETS:
        return _resolve_name(ASSETS[text], download=download)
    path = Path(text).expanduser()
    if not path.exists():
        registry_suffixes = tuple({Path(a.filename).suffix for a in ASSETS.values()})
        if os.sep not in text and not text.endswith(registry_suffixes):
            known = ", ".join(n for n, a in ASSETS.items())
            raise AssetError(f"{text!r} is neither a known asset name ({known}) nor an existing file")
        raise AssetError(f"{path}: no such file")
    if not path.is_file():
        raise AssetError(f"{path}: not a regular file")
    # Samples are left out: a user's own photo may well be called t1.jpg.
    by_filename = {a.filename: a for a in ASSETS.values() if a.kind != "sample"}
    if path.name in by_filename:
        return _verified(path, by_filename[path.name], "path")
    return ResolvedAsset(path=path, source="path", sha256=sha256_of(path), asset=None)


def sample_photos(*, download: bool = True) -> list[Path]:
    """The sample photographs (resolved like the weights: mirror, cache, download), in order."""
    return [_resolve_name(ASSETS[name], download=download).path for name in SAMPLE_PHOTOS]


def _resolve_name(asset: Asset, *, download: bool) -> ResolvedAsset:
    mirror = assets_dir()
    if mirror is not None and (mirror / asset.filename).is_file():
        return _verified(mirror / asset.filename, asset, "SSRCONV_ASSETS")
    cached = cache_dir() / asset.filename
    if cached.is_file():
        try:
            return _verified(cached, asset, "cache")
        except AssetError:
            if not download:
                raise
            # A corrupt cache entry is re-fetched rather than trusted or left in the way.
            cached.unlink()
    if not download:
        raise AssetError(_missing_message(asset, reason="downloads disabled"))
    return _download(asset)


def _download_url(asset: Asset) -> str:
    base = os.environ.get("SSRCONV_MIRROR_URL")
    return f"{base.rstrip('/')}/{asset.filename}" if base else asset.url


def _missing_message(asset: Asset, reason: str) -> str:
    mirror = assets_dir()
    where = f"SSRCONV_ASSETS={mirror}" if mirror else "SSRCONV_ASSETS (unset)"
    return (
        f"{asset.name}: {asset.filename} is not in {where} nor in the cache {cache_dir()}, "
        f"and the download from {_download_url(asset)} failed ({reason}); "
        f"set SSRCONV_ASSETS to a directory holding {asset.filename} (or SSRCONV_MIRROR_URL to a "
        "mirror serving it), or pass the file's path"
    )


def _download(asset: Asset) -> ResolvedAsset:
    if os.environ.get("SSRCONV_OFFLINE") == "1":
        raise AssetError(_missing_message(asset, reason="SSRCONV_OFFLINE=1"))
    target_dir = cache_dir()
    try:
        target_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise AssetError(f"cannot create the cache directory {target_dir}: {err.strerror}; "
                         "set SSRCONV_CACHE to a writable directory") from None
    url = _download_url(asset)
    from ssrconv.atomic import fsync_dir, temp_path

    tmp = temp_path(target_dir / asset.filename, ".part")
    try:
        digest = hashlib.sha256()
        with open(tmp, "xb") as out:
            try:
                with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
                    for chunk in iter(lambda: response.read(1 << 16), b""):
                        digest.update(chunk)
                        out.write(chunk)
            except urllib.error.HTTPError as err:
                raise AssetError(_missing_message(asset, reason=f"HTTP {err.code} {err.reason}")) from None
            except (urllib.error.URLError, OSError, ValueError) as err:
                reason = getattr(err, "reason", None) or err
                raise AssetError(_missing_message(asset, reason=str(reason))) from None
            out.flush()
            os.fsync(out.fileno())
        actual = digest.hexdigest()
        if actual != asset.sha256:
            raise AssetError(
                f"{url}: downloaded {asset.filename} has sha256 {actual}, expected {asset.sha256}; "
                "the mirror serves a different file: nothing was saved"
            )
        final = target_dir / asset.filename
        os.replace(tmp, final)
        fsync_dir(target_dir)
        return ResolvedAsset(path=final, source="download", sha256=actual, asset=asset)
    finally:
        tmp.unlink(missing_ok=True)


def find_weights(head: str, entry: dict, candidates=()) -> str:
    """The weights (registry name or path) whose sha256 is the one ``entry`` (a manifest's
    ``weights[head]``) records: its own name first, then the registry, then ``candidates``
    (paths the user gave). WeightsError naming the head, the name and the hash otherwise: an
    export is never compared with weights it was not made from."""
    want = entry.get("sha256")
    names = [entry.get("name")] + [a.name for a in ASSETS.values() if a.sha256 == want]
    for name in [n for n in names if n] + [str(c) for c in candidates]:
        try:
            if resolve(name, download=name in ASSETS).sha256 == want:
                return name
        except (AssetError, OSError):
            continue
    raise WeightsError(f"the {head} weights {entry.get('name')!r} (sha256 {str(want)[:16]}...) "
                       "this artifact was exported from are not here; pass them with --weights PATH")
