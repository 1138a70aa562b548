"""The asset registry: resolution order, hash checks, atomic downloads, clear offline errors."""

from __future__ import annotations

import functools
import hashlib
import http.server
import shutil
import threading
from pathlib import Path

import pytest

from ssrconv.errors import AssetError, WeightsError
from ssrconv.assets import ASSETS, resolve


def test_registry_matches_shared_sha256sums(assets_dir):
    sums = dict(reversed(line.split()) for line in (assets_dir / "SHA256SUMS").read_text().splitlines()
                if line.strip())
    for asset in ASSETS.values():
        assert sums[asset.filename] == asset.sha256, asset.name
        assert asset.url.startswith("https://")


def test_resolves_from_mirror_and_verifies(assets_dir):
    found = resolve("age-wiki")
    assert found.source == "SSRCONV_ASSETS"
    assert found.sha256 == hashlib.sha256(found.path.read_bytes()).hexdigest()


def test_hash_mismatch_names_file_and_both_hashes(assets_dir, isolated_assets):
    mirror, _ = isolated_assets
    data = bytearray((assets_dir / "ssrnet_age_wiki.h5").read_bytes())
    data[-100] ^= 0xFF
    (mirror / "ssrnet_age_wiki.h5").write_bytes(bytes(data))
    with pytest.raises(AssetError) as err:
        resolve("age-wiki")
    text = str(err.value)
    assert "ssrnet_age_wiki.h5" in text and ASSETS["age-wiki"].sha256 in text
    assert hashlib.sha256(bytes(data)).hexdigest() in text
    assert "\n" not in text


def test_explicit_path_with_registry_name_is_hash_checked(assets_dir, tmp_path):
    bad = tmp_path / "ssrnet_gender_wiki.h5"
    bad.write_bytes((assets_dir / "ssrnet_gender_wiki.h5").read_bytes()[:-10])
    with pytest.raises(AssetError, match="sha256 mismatch"):
        resolve(bad)


def test_truncated_user_file_is_a_clear_weights_error(assets_dir, tmp_path):
    from ssrconv.reference import load_reference

    truncated = tmp_path / "my weights.h5"  # a space, and not a registry name: no hash to check
    truncated.write_bytes((assets_dir / "ssrnet_age_wiki.h5").read_bytes()[:5000])
    with pytest.raises(WeightsError, match="my weights.h5"):
        load_reference("age", age_weights=truncated)


def test_wrong_kind_weights_are_refused(assets_dir):
    from ssrconv.reference import load_reference

    with pytest.raises(WeightsError, match="holds gender weights"):
        load_reference("age", age_weights="gender-wiki")
    with pytest.raises(WeightsError, match="holds age weights"):
        load_reference("gender", gender_weights="age-imdb")


def test_foreign_h5_is_refused(tmp_path):
    import h5py
    import numpy as np

    from ssrconv.reference import load_reference

    foreign = tmp_path / "mobilenet.h5"
    with h5py.File(foreign, "w") as f:
        f.attrs["layer_names"] = [b"conv1"]
        g = f.create_group("conv1")
        g.attrs["weight_names"] = [b"conv1/kernel:0"]
        g.create_dataset("conv1/kernel:0", data=np.zeros((3, 3, 3, 8), np.float32))
    with pytest.raises(WeightsError, match="not SSR-Net weights"):
        load_reference("age", age_weights=foreign)


def test_missing_offline_says_what_to_set(isolated_assets):
    with pytest.raises(AssetError) as err:
        resolve("age-morph2")
    text = str(err.value)
    assert "SSRCONV_ASSETS" in text and "ssrnet_age_morph2.h5" in text and "\n" not in text
    _, cache = isolated_assets
    assert not any(cache.glob("*.part")) if cache.exists() else True


def test_unknown_name_lists_known_names():
    with pytest.raises(AssetError, match="age-wiki"):
        resolve("age-nonexistent")


class _Server:
    """A 127.0.0.1 HTTP server over a directory, in a thread, stopped by the fixture."""

    def __init__(self, root: Path):
        handler = functools.partial(_QuietHandler, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.requests = 0


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_mirror(tmp_path, monkeypatch, isolated_assets):
    root = tmp_path / "served"
    root.mkdir()
    server = _Server(root)
    monkeypatch.setenv("SSRCONV_MIRROR_URL", server.url)
    yield root
    server.httpd.shutdown()
    server.httpd.server_close()


def test_download_from_local_http_mirror_into_cache(assets_dir, http_mirror, isolated_assets):
    _, cache = isolated_assets
    shutil.copy(assets_dir / "ssrnet_gender_morph2.h5", http_mirror)
    first = resolve("gender-morph2")
    assert first.source == "download" and first.path == cache / "ssrnet_gender_morph2.h5"
    assert first.sha256 == ASSETS["gender-morph2"].sha256
    (http_mirror / "ssrnet_gender_morph2.h5").unlink()  # second load must not need the network
    second = resolve("gender-morph2")
    assert second.source == "cache"
    assert [p.name for p in cache.iterdir()] == ["ssrnet_gender_morph2.h5"]


def test_download_of_wrong_bytes_leaves_nothing(http_mirror, isolated_assets):
    _, cache = isolated_assets
    (http_mirror / "ssrnet_age_imdb.h5").write_bytes(b"<html>not the weights</html>")
    with pytest.raises(AssetError, match="nothing was saved"):
        resolve("age-imdb")
    assert list(cache.iterdir()) == []


def test_corrupt_cache_entry_is_refetched(assets_dir, http_mirror, isolated_assets):
    _, cache = isolated_assets
    cache.mkdir()
    (cache / "ssrnet_age_imdb.h5").write_bytes(b"garbage")
    shutil.copy(assets_dir / "ssrnet_age_imdb.h5", http_mirror)
    found = resolve("age-imdb")
    assert found.source == "download" and found.sha256 == ASSETS["age-imdb"].sha256


def test_missing_file_on_mirror_is_one_clear_line(http_mirror):
    with pytest.raises(AssetError) as err:
        resolve("age-imdb")
    assert "404" in str(err.value) or "Not Found" in str(err.value)
    assert "SSRCONV_ASSETS" in str(err.value)


def test_sample_photos_are_registry_assets_with_licence_and_url(assets_dir):
    from ssrconv.assets import SAMPLE_PHOTOS, sample_photos

    notice = (assets_dir / "LICENSE.samples.txt").read_text()
    assert [ASSETS[n].filename for n in SAMPLE_PHOTOS] == ["t1.jpg", "astronaut.png"]
    assert {ASSETS[n].licence for n in SAMPLE_PHOTOS} == {"MIT", "public domain"}
    for name in SAMPLE_PHOTOS:
        assert f"URL: {ASSETS[name].url}" in notice
    assert sample_photos() == [assets_dir / "t1.jpg", assets_dir / "astronaut.png"]


def test_sample_photos_download_into_cache_like_the_weights(assets_dir, http_mirror, isolated_assets):
    from ssrconv.assets import sample_photos

    _, cache = isolated_assets
    shutil.copy(assets_dir / "t1.jpg", http_mirror)
    (http_mirror / "astronaut.png").write_bytes(b"not the published photo")
    with pytest.raises(AssetError, match="astronaut.png has sha256"):
        sample_photos()
    shutil.copy(assets_dir / "astronaut.png", http_mirror)
    assert sample_photos() == [cache / "t1.jpg", cache / "astronaut.png"]


def test_a_user_photo_named_like_a_sample_is_not_hash_checked(tmp_path):
    (tmp_path / "t1.jpg").write_bytes(b"my own photo")
    assert resolve(tmp_path / "t1.jpg").asset is None
