"""The data layer: strict IDX parsing, the two verification rules, cache and downloads."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import json
import re
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from conftest import fake_arrays, gz, idx_bytes, spec_for
from fmnist import data
from fmnist.errors import DataError

HEX64 = re.compile(r"^[0-9a-f]{64}$")


# ------------------------------------------------------------------ the file table


def test_file_table_describes_four_distinct_official_files():
    assert {f.name for f in data.FILES} == {
        "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"}
    for spec in data.FILES:
        assert HEX64.match(spec.sha256) and HEX64.match(spec.sha256_payload)
        assert spec.count == (60000 if spec.split == "train" else 10000)
    assert len({f.sha256 for f in data.FILES}) == 4
    for split in data.SPLITS:
        images, labels = data.files_for(split)
        assert (images.kind, labels.kind, images.magic, labels.magic) == (
            "images", "labels", 2051, 2049)


def test_class_names_in_label_order():
    assert data.CLASS_NAMES[0] == "T-shirt/top" and data.CLASS_NAMES[9] == "Ankle boot"
    assert len(data.CLASS_NAMES) == 10


def test_payload_hashes_match_the_shared_manifest(real_data_dir):
    manifest = json.loads((real_data_dir / "MANIFEST.json").read_text())
    for spec in data.FILES:
        assert manifest[spec.name]["sha256_payload"] == spec.sha256_payload
        assert tuple(manifest[spec.name]["shape"]) == spec.shape


# ------------------------------------------------------------------ parsing


def _label_spec(count: int) -> data.DataFile:
    return data.DataFile("labels.gz", "train", "labels", count, "0" * 64, "0" * 64)


def _image_spec(count: int) -> data.DataFile:
    return data.DataFile("images.gz", "train", "images", count, "0" * 64, "0" * 64)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 30), st.data())
def test_idx_round_trip(count, draw):
    images = draw.draw(arrays(np.uint8, (count, 28, 28)))
    labels = draw.draw(arrays(np.uint8, (count,), elements=st.integers(0, 9)))
    np.testing.assert_array_equal(data.parse_idx(idx_bytes(images), _image_spec(count)), images)
    np.testing.assert_array_equal(data.parse_idx(idx_bytes(labels), _label_spec(count)), labels)


@pytest.mark.parametrize("raw, problem", [
    (idx_bytes(np.zeros(5, np.uint8), magic=2051), "magic number 2051, expected 2049"),
    (idx_bytes(np.zeros(4, np.uint8)), r"shape \(4,\), expected \(5,\)"),
    (idx_bytes(np.zeros(5, np.uint8))[:-1], "holds 4 data bytes, expected 5"),
    (idx_bytes(np.zeros(5, np.uint8)) + b"\0", "holds 6 data bytes, expected 5"),
    (idx_bytes(np.array([0, 1, 2, 10, 3], np.uint8)), "label 10, outside the classes 0..9"),
    (b"\0\0", "too short"),
    (b"\0\0\x08\x01\0\0", "truncated IDX header"),
])
def test_parser_rejects_malformed_labels(raw, problem):
    with pytest.raises(DataError, match=problem):
        data.parse_idx(raw, _label_spec(5), "labels.gz")


def test_parser_rejects_images_of_the_wrong_size():
    wrong = idx_bytes(np.zeros((3, 32, 32), np.uint8))
    with pytest.raises(DataError, match=r"shape \(3, 32, 32\), expected \(3, 28, 28\)"):
        data.parse_idx(wrong, _image_spec(3))


# ------------------------------------------------------------------ verification rules


def _write(tmp_path: Path, name: str, archive: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(archive)
    return path


def test_archive_with_official_hash_is_accepted(tmp_path):
    images, _ = fake_arrays("train", 7)
    archive = gz(idx_bytes(images))
    spec = spec_for("i.gz", "train", "images", images, archive)
    spec = data.DataFile(**{**spec.__dict__, "sha256_payload": "f" * 64})  # only the archive rule
    array, how = data.read_verified(_write(tmp_path, "i.gz", archive), spec)
    assert how == "official archive"
    np.testing.assert_array_equal(array, images)


def test_recompressed_copy_with_the_right_payload_is_accepted(tmp_path):
    images, _ = fake_arrays("train", 7)
    spec = spec_for("i.gz", "train", "images", images, gz(idx_bytes(images), level=9))
    recompressed = gz(idx_bytes(images), level=1, mtime=12345)
    assert hashlib.sha256(recompressed).hexdigest() != spec.sha256
    array, how = data.read_verified(_write(tmp_path, "i.gz", recompressed), spec)
    assert how == "payload"
    np.testing.assert_array_equal(array, images)


def test_the_shared_copy_verifies_by_payload(real_data_dir):
    x, how = data.read_verified(real_data_dir / "t10k-images-idx3-ubyte.gz", data.FILES[2])
    assert how == "payload" and x.shape == (10000, 28, 28) and x.dtype == np.uint8


def test_structurally_valid_but_different_data_is_rejected(tmp_path):
    images, _ = fake_arrays("train", 7)
    spec = spec_for("i.gz", "train", "images", images, gz(idx_bytes(images)))
    other = images.copy()
    other[0, 0, 0] ^= 1  # one pixel differs
    with pytest.raises(DataError, match="does not match Fashion-MNIST"):
        data.read_verified(_write(tmp_path, "i.gz", gz(idx_bytes(other))), spec)


def test_mnist_digits_served_under_the_fashion_name_are_named_as_such(tmp_path):
    images, _ = fake_arrays("train", 20)
    spec = spec_for("i.gz", "train", "images", images, gz(idx_bytes(images)))
    # MNIST-like: mostly black with a bright stroke, mean pixel ~0.13 (Fashion: ~0.29).
    digits = np.zeros_like(images)
    digits[:, 4:24, 11:16] = 255  # 100 of 784 pixels lit: mean 0.128
    with pytest.raises(DataError, match="likely MNIST digits"):
        data.read_verified(_write(tmp_path, "i.gz", gz(idx_bytes(digits))), spec)


@pytest.mark.parametrize("damage, problem", [
    (lambda a: a[: len(a) // 2], "truncated"),
    (lambda a: a[:-8] + bytes([a[-8] ^ 0xFF]) + a[-7:], "not a valid gzip file"),  # CRC
    (lambda a: b"this is not gzip at all", "not a valid gzip file"),
    (lambda a: a[:20] + bytes([a[20] ^ 0xFF]) + a[21:], "(not a valid gzip|truncated|does not match|magic)"),
])
def test_corrupt_archives_are_rejected_in_one_line(tmp_path, damage, problem):
    images, _ = fake_arrays("train", 7)
    archive = gz(idx_bytes(images))
    spec = spec_for("i.gz", "train", "images", images, archive)
    path = _write(tmp_path, "i.gz", damage(archive))
    with pytest.raises(DataError, match=problem) as caught:
        data.read_verified(path, spec)
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)


def test_bad_crc_is_caught_even_when_the_payload_reads_fully(tmp_path):
    images, _ = fake_arrays("train", 3)
    archive = bytearray(gz(idx_bytes(images)))
    archive[-8] ^= 0x01  # CRC32 field of the gzip trailer
    spec = spec_for("i.gz", "train", "images", images, bytes(archive))
    with pytest.raises(DataError, match="CRC"):
        data.read_verified(_write(tmp_path, "i.gz", bytes(archive)), spec)


def test_gzip_bomb_is_stopped_after_the_expected_size(tmp_path):
    labels = np.zeros(5, np.uint8)
    spec = _label_spec(5)
    bomb = gz(idx_bytes(np.zeros(5_000_000, np.uint8))[:8] + b"\0" * 5_000_000)
    with pytest.raises(DataError, match="decodes to more than the 13 bytes expected"):
        data.decompress(_write(tmp_path, "labels.gz", bomb), spec)
    assert labels.size == 5


# ------------------------------------------------------------------ cache vs data dir


def test_load_data_reads_a_data_dir(fake_dataset):
    directory, contents = fake_dataset
    (x_train, y_train), (x_test, y_test) = data.load_data(directory)
    np.testing.assert_array_equal(x_train, contents["train-images-idx3-ubyte.gz"][0])
    np.testing.assert_array_equal(y_test, contents["t10k-labels-idx1-ubyte.gz"][0])
    assert x_train.dtype == np.uint8 and x_train.shape == (50, 28, 28) and y_train.shape == (50,)
    assert x_test.shape == (20, 28, 28)


def test_bad_file_in_a_users_data_dir_is_left_alone(fake_dataset):
    directory, _ = fake_dataset
    bad = directory / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(gz(idx_bytes(np.full(20, 3, np.uint8))))
    before = bad.read_bytes()
    with pytest.raises(DataError, match="check FMNIST_DATA_DIR"):
        data.load_split("test", directory)
    assert bad.read_bytes() == before


def test_bad_file_in_the_cache_is_removed(fake_dataset, tmp_path):
    directory, _ = fake_dataset
    cache = tmp_path / "cache"
    cache.mkdir()
    for path in directory.iterdir():
        (cache / path.name).write_bytes(path.read_bytes())
    bad = cache / "train-labels-idx1-ubyte.gz"
    bad.write_bytes(b"\x1f\x8b truncated")
    with pytest.raises(DataError, match="removed it from the cache, rerun"):
        data.load_split("train")  # no data dir: the cache is used
    assert not bad.exists()
    assert (cache / "train-images-idx3-ubyte.gz").exists()  # good files stay


def test_missing_data_dir_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("FMNIST_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="does not exist; check FMNIST_DATA_DIR"):
        data.load_split("train")


def test_missing_file_in_data_dir_is_a_clear_error(fake_dataset):
    directory, _ = fake_dataset
    (directory / "train-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError, match="is missing; put the four Fashion-MNIST .gz files"):
        data.load_split("train", directory)


# ------------------------------------------------------------------ downloads


class _Mirror(http.server.BaseHTTPRequestHandler):
    """Serves ``files`` (name -> bytes); ``cut`` names files whose stream breaks midway."""

    files: dict[str, bytes] = {}
    cut: set[str] = set()

    def do_GET(self):  # noqa: N802 (http.server's name)
        name = self.path.rsplit("/", 1)[-1]
        body = self.files.get(name)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if name in self.cut:
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(2)  # the connection drops mid-download
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def mirror():
    handler = type("Handler", (_Mirror,), {"files": {}, "cut": set()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    # Polled every 20 ms instead of 0.5 s: shutdown() waits for the next poll.
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", handler
    server.shutdown()
    server.server_close()


def _dead_mirror() -> str:
    return "http://127.0.0.1:9/"  # discard port: connection refused


def test_download_falls_back_to_the_next_mirror_and_verifies(fake_dataset, mirror, monkeypatch):
    _, contents = fake_dataset
    url, handler = mirror
    handler.files = {name: archive for name, (_, archive) in contents.items()}
    monkeypatch.setattr(data, "MIRRORS", (_dead_mirror(), url))
    monkeypatch.setattr(data, "DOWNLOAD_RETRIES", 0)
    (x_train, y_train), _ = data.load_data()  # empty cache: downloads everything
    np.testing.assert_array_equal(x_train, contents["train-images-idx3-ubyte.gz"][0])
    cached = sorted(p.name for p in data.cache_dir().iterdir())
    assert cached == sorted(contents)  # the four files and nothing else


def test_mirror_serving_other_data_leaves_nothing_in_the_cache(fake_dataset, mirror, monkeypatch):
    _, contents = fake_dataset
    url, handler = mirror
    digits = gz(idx_bytes(np.zeros((50, 28, 28), np.uint8)))  # right shape, wrong data
    handler.files = {name: digits for name in contents}
    monkeypatch.setattr(data, "MIRRORS", (url,))
    monkeypatch.setattr(data, "DOWNLOAD_RETRIES", 0)
    with pytest.raises(DataError, match="could not download train-images-idx3-ubyte.gz"):
        data.load_split("train")
    assert list(data.cache_dir().iterdir()) == []


def test_interrupted_download_leaves_nothing_behind(fake_dataset, mirror, monkeypatch):
    _, contents = fake_dataset
    url, handler = mirror
    handler.files = {name: archive for name, (_, archive) in contents.items()}
    handler.cut = {"train-images-idx3-ubyte.gz"}
    monkeypatch.setattr(data, "MIRRORS", (url,))
    monkeypatch.setattr(data, "DOWNLOAD_RETRIES", 0)
    with pytest.raises(DataError, match="could not download"):
        data.load_split("train")
    assert list(data.cache_dir().iterdir()) == []


# ------------------------------------------------------------------ the real dataset


def test_real_data_has_the_published_shape_and_statistics(real_data_dir):
    (x_train, y_train), (x_test, y_test) = data.load_data(real_data_dir)
    assert (x_train.shape, y_train.shape, x_test.shape, y_test.shape) == (
        (60000, 28, 28), (60000,), (10000, 28, 28), (10000,))
    assert x_train.dtype == y_train.dtype == np.uint8
    assert np.bincount(y_train).tolist() == [6000] * 10
    assert np.bincount(y_test).tolist() == [1000] * 10
    assert abs(x_train.mean() / 255 - 0.2860) < 5e-4  # the published mean
    x_train[0, 0, 0] = 1  # arrays are writable copies, not views of a buffer


def test_gzip_module_error_types_are_the_ones_we_catch():
    # decompress() relies on these: a changed stdlib would turn clean errors into tracebacks.
    with pytest.raises(EOFError):
        gzip.decompress(gz(b"x" * 100)[:20])
    with pytest.raises((gzip.BadGzipFile, zlib.error)):
        gzip.decompress(b"not gzip")


def test_a_read_error_keeps_a_good_cached_file(fake_dataset, tmp_path, monkeypatch):
    import errno

    directory, _ = fake_dataset
    cache = tmp_path / "cache"
    cache.mkdir()
    for path in directory.iterdir():
        (cache / path.name).write_bytes(path.read_bytes())

    def failing_disk(path):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(data, "sha256_file", failing_disk)
    with pytest.raises(DataError, match="cannot read .* Input/output error"):
        data.load_split("train")
    assert sorted(p.name for p in cache.iterdir()) == sorted(p.name for p in directory.iterdir())


def test_an_unwritable_cache_is_one_clear_error(fake_dataset, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("FMNIST_CACHE_DIR", str(blocker / "cache"))
    with pytest.raises(DataError, match="cannot write to the data cache .*FMNIST_CACHE_DIR"):
        data.load_split("train")


def test_a_full_disk_during_download_is_one_clear_error_and_leaves_nothing(fake_dataset, mirror,
                                                                           monkeypatch):
    import errno

    import pooch

    _, contents = fake_dataset
    url, handler = mirror
    handler.files = {name: archive for name, (_, archive) in contents.items()}
    monkeypatch.setattr(data, "MIRRORS", (url,))

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pooch.Pooch, "fetch", disk_full)
    with pytest.raises(DataError, match="No space left on device.*free some space"):
        data.load_split("train")
    assert list(data.cache_dir().iterdir()) == []
