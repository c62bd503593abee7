"""Fashion-MNIST files: where they come from, how they are checked, how they are read.

`load_data()` returns the dataset the way `keras.datasets.fashion_mnist.load_data()`
does::

    (x_train, y_train), (x_test, y_test) = load_data()
    # x_train: uint8 (60000, 28, 28), pixels 0..255, garments light on black
    # y_train: uint8 (60000,), labels 0..9, see CLASS_NAMES
    # x_test:  uint8 (10000, 28, 28);  y_test: uint8 (10000,)

Where the files come from, in order:

1. ``data_dir=`` / ``--data-dir`` / ``FMNIST_DATA_DIR``: a directory holding the four
   ``.gz`` files. Used as is and never written to.
2. Otherwise a per-user cache (``FMNIST_CACHE_DIR`` or the OS cache folder), filled on
   first use by downloading the official archives with pooch, which streams into a
   temporary file and moves it into place only once its SHA-256 matches.

Every load verifies every file, not only after a download (torchvision's loader trusts
a file forever once it exists). A file is genuine when its archive matches the official
SHA-256, or when its decoded payload (the bytes after the IDX header) matches the
official payload SHA-256: the second rule accepts a correct copy that was recompressed.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import struct
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fmnist.errors import DataError

CLASS_NAMES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

IMAGE_SIZE = 28
NUM_CLASSES = len(CLASS_NAMES)

# Official mirrors, tried in order. The TensorFlow bucket serves HTTPS; Zalando's S3
# website endpoint only plain HTTP (the SHA-256 check makes that safe).
MIRRORS: tuple[str, ...] = (
    "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
)
DOWNLOAD_TIMEOUT_S = 60
DOWNLOAD_RETRIES = 2

IMAGES_MAGIC = 2051  # IDX: 0x00 0x00, type 0x08 (uint8), 3 dimensions
LABELS_MAGIC = 2049  # IDX: 0x00 0x00, type 0x08 (uint8), 1 dimension

# MNIST digits have a much darker mean pixel (train 0.1307, test 0.1325) than
# Fashion-MNIST (0.2860 / 0.2868); a mirror once served digits under these names.
_MNIST_MEAN_PIXEL = (0.125, 0.138)


@dataclass(frozen=True)
class DataFile:
    """One IDX archive of the dataset and the facts that identify it."""

    name: str  # file name, the same on every mirror
    split: str  # "train" or "test"
    kind: str  # "images" or "labels"
    count: int  # number of items (images or labels)
    sha256: str  # SHA-256 of the official .gz archive
    sha256_payload: str  # SHA-256 of the decoded bytes after the IDX header

    @property
    def magic(self) -> int:
        return IMAGES_MAGIC if self.kind == "images" else LABELS_MAGIC

    @property
    def shape(self) -> tuple[int, ...]:
        if self.kind == "images":
            return (self.count, IMAGE_SIZE, IMAGE_SIZE)
        return (self.count,)

    @property
    def header_size(self) -> int:
        return 4 + 4 * len(self.shape)


FILES: tuple[DataFile, ...] = (
    DataFile(
        "train-images-idx3-ubyte.gz", "train", "images", 60000,
        "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        "2e487a6c89124f78f2d7521542223cafe96f7123c3ca13d447772ac6ecbb3012",
    ),
    DataFile(
        "train-labels-idx1-ubyte.gz", "train", "labels", 60000,
        "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        "657fbd221bfc9f4198cc14b5619cc33ec57c58dd0e47af4d99d6650759e869a7",
    ),
    DataFile(
        "t10k-images-idx3-ubyte.gz", "test", "images", 10000,
        "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        "c867c93ff95360594e8ec3287995350b824dd110b11595c0e13d5423f621867a",
    ),
    DataFile(
        "t10k-labels-idx1-ubyte.gz", "test", "labels", 10000,
        "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        "3d0e6c6ea990b53b6f8f500a41cac93881d981b315f84578b7d915342ade01e9",
    ),
)

SPLITS = ("train", "test")


@dataclass(frozen=True)
class DataSource:
    """Where the files are read from, and whether fmnist owns that folder."""

    directory: Path
    is_cache: bool  # True: fmnist's cache (may download, may delete bad files)

    @property
    def origin(self) -> str:
        return "cache" if self.is_cache else "data dir"


def cache_dir() -> Path:
    """The per-user download cache: ``FMNIST_CACHE_DIR`` or the OS cache folder."""
    override = os.environ.get("FMNIST_CACHE_DIR")
    if override:
        return Path(override).expanduser()
    import pooch  # lazy: pooch imports requests, which the CLI's --help must not pay for

    return Path(pooch.os_cache("fmnist"))


def resolve_source(data_dir: str | os.PathLike | None = None) -> DataSource:
    """Pick the folder to read: ``data_dir``, else ``FMNIST_DATA_DIR``, else the cache."""
    chosen = data_dir if data_dir is not None else os.environ.get("FMNIST_DATA_DIR") or None
    if chosen is None:
        return DataSource(cache_dir(), is_cache=True)
    directory = Path(chosen).expanduser()
    if not directory.is_dir():
        how = "--data-dir" if data_dir is not None else "FMNIST_DATA_DIR"
        raise DataError(
            f"data directory {directory} ({how}) does not exist; "
            f"check {how}, or unset it to download into the cache"
        )
    return DataSource(directory, is_cache=False)


def files_for(split: str) -> tuple[DataFile, DataFile]:
    """The (images, labels) pair of one split, looked up in the current FILES table."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    images = next(f for f in FILES if f.split == split and f.kind == "images")
    labels = next(f for f in FILES if f.split == split and f.kind == "labels")
    return images, labels


# ---------------------------------------------------------------- reading and checking


def decompress(path: Path, spec: DataFile) -> bytes:
    """Gunzip ``path``, refusing truncated or corrupt streams and oversize output.

    Reads at most one byte more than the file should decode to, so a gzip bomb or a
    wrong file costs no more memory than the right one.
    """
    expected = spec.header_size + int(np.prod(spec.shape))
    try:
        with gzip.open(path, "rb") as stream:
            raw = stream.read(expected + 1)
            if len(raw) == expected:
                stream.read(1)  # reach the end so gzip checks the CRC and length
    except EOFError:
        raise _bad(path, "is truncated (the gzip stream ends early)") from None
    except (gzip.BadGzipFile, zlib.error) as error:
        raise _bad(path, f"is not a valid gzip file ({_first_line(error)})") from None
    except OSError as error:
        raise DataReadError(f"cannot read {path}: {error.strerror or error}; check the "
                            "disk and the file's permissions, then rerun") from None
    if len(raw) > expected:
        raise _bad(path, f"decodes to more than the {expected} bytes expected")
    return raw


def parse_idx(raw: bytes, spec: DataFile, path: Path | str = "<bytes>") -> np.ndarray:
    """Parse decoded IDX bytes into a uint8 array of ``spec.shape``, checking every field.

    Checks, before trusting the data: the magic number (which encodes dtype and number
    of dimensions), each dimension's size, the exact byte count, and for labels that
    every value is a class index 0..9.
    """
    path = Path(path)
    if len(raw) < 4:
        raise _bad(path, f"is too short to be an IDX file ({len(raw)} bytes)")
    (magic,) = struct.unpack(">i", raw[:4])
    if magic != spec.magic:
        raise _bad(path, f"has IDX magic number {magic}, expected {spec.magic} ({spec.kind})")
    ndim = len(spec.shape)
    if len(raw) < spec.header_size:
        raise _bad(path, f"has a truncated IDX header ({len(raw)} bytes)")
    dims = struct.unpack(f">{ndim}i", raw[4 : spec.header_size])
    if dims != spec.shape:
        raise _bad(path, f"has shape {dims}, expected {spec.shape}")
    payload_size = len(raw) - spec.header_size
    if payload_size != int(np.prod(spec.shape)):
        raise _bad(
            path, f"holds {payload_size} data bytes, expected {int(np.prod(spec.shape))}"
        )
    array = np.frombuffer(raw, dtype=np.uint8, offset=spec.header_size).reshape(spec.shape)
    if spec.kind == "labels" and array.size and int(array.max()) >= NUM_CLASSES:
        raise _bad(path, f"has label {int(array.max())}, outside the classes 0..{NUM_CLASSES - 1}")
    return array


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_verified(path: Path, spec: DataFile) -> tuple[np.ndarray, str]:
    """Read one archive and prove it is the genuine file.

    Returns the array (a fresh, writable copy) and how it was verified:
    ``"official archive"`` or ``"payload"`` (a recompressed copy of the right data).
    Raises DataError for anything else.
    """
    raw = decompress(path, spec)
    array = parse_idx(raw, spec, path)
    try:
        archive_sha256 = sha256_file(path)
    except OSError as error:
        raise DataReadError(f"cannot read {path}: {error.strerror or error}; check the "
                            "disk and the file's permissions, then rerun") from None
    if archive_sha256 == spec.sha256:
        how = "official archive"
    elif hashlib.sha256(memoryview(raw)[spec.header_size :]).hexdigest() == spec.sha256_payload:
        how = "payload"
    else:
        raise _bad(path, "does not match Fashion-MNIST (neither its archive nor its "
                         "decoded SHA-256 is the official one)" + _mnist_hint(array, spec))
    return array.copy(), how


def _mnist_hint(array: np.ndarray, spec: DataFile) -> str:
    if spec.kind != "images" or not array.size:
        return ""
    mean = float(array.mean()) / 255.0
    low, high = _MNIST_MEAN_PIXEL
    if low <= mean <= high:
        return f": its mean pixel {mean:.4f} is MNIST's, so this is likely MNIST digits"
    return ""


class DataReadError(DataError):
    """The file system failed while reading a file: says nothing about the file itself."""


def _bad(path: Path, problem: str) -> DataError:
    return DataError(f"{path} {problem}")


def _first_line(error: BaseException) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__


# ---------------------------------------------------------------- fetching and loading


def download(spec: DataFile, directory: Path, mirrors: tuple[str, ...] | None = None,
             progressbar: bool = True) -> Path:
    """Download ``spec`` into ``directory`` from the first mirror that serves it intact.

    pooch streams into a temporary file beside the target and moves it into place only
    when its SHA-256 matches; on any failure (network, hash, Ctrl-C) the temporary file
    is deleted, so an interrupted download leaves nothing behind.
    """
    import pooch

    _require_writable(directory)
    errors = []
    for base in mirrors or MIRRORS:
        fetcher = pooch.create(
            path=directory,
            base_url=base,
            registry={spec.name: f"sha256:{spec.sha256}"},
            retry_if_failed=DOWNLOAD_RETRIES,
        )
        downloader = pooch.HTTPDownloader(progressbar=progressbar, timeout=DOWNLOAD_TIMEOUT_S)
        try:
            return Path(fetcher.fetch(spec.name, downloader=downloader))
        except OSError as error:
            if error.errno in _DISK_ERRNOS:  # the disk, not the mirror: no other will do better
                raise _cache_error(directory, error) from None
            errors.append(f"{base}: {_first_line(error)}")
        except Exception as error:  # network errors and hash mismatches alike
            errors.append(f"{base}: {_first_line(error)}")
    raise DataError(
        f"could not download {spec.name} from any mirror ({'; '.join(errors)}); "
        "check your connection, or set FMNIST_DATA_DIR to a folder holding the files"
    )


_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS)


def _cache_error(directory: Path, error: OSError) -> DataError:
    fix = ("free some space" if error.errno in (errno.ENOSPC, errno.EDQUOT)
           else "make it writable")
    return DataError(f"cannot write to the data cache {directory} ({error.strerror or error}); "
                     f"{fix}, set FMNIST_CACHE_DIR to another folder, or FMNIST_DATA_DIR to "
                     "a folder holding the four files")


def _require_writable(directory: Path) -> None:
    """Create ``directory`` and prove a file can be written there, or raise a DataError."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as error:
        raise _cache_error(directory, error) from None


def load_file(spec: DataFile, source: DataSource) -> tuple[np.ndarray, str]:
    """Find, fetch if needed, and verify one file. Returns (array, how it verified)."""
    path = source.directory / spec.name
    if not path.is_file():
        if not source.is_cache:
            raise DataError(
                f"{path} is missing; put the four Fashion-MNIST .gz files in "
                f"{source.directory}, or check FMNIST_DATA_DIR / --data-dir"
            )
        download(spec, source.directory)
    try:
        return read_verified(path, spec)
    except DataReadError:
        raise  # a failing disk or a permission: the file may well be good, keep it
    except DataError as error:
        if source.is_cache:
            # The cache is ours: drop the bad copy so the next run fetches a good one.
            path.unlink(missing_ok=True)
            raise DataError(f"{error}; removed it from the cache, rerun to download it again") from None
        raise DataError(f"{error}; replace it with a good copy, or check FMNIST_DATA_DIR") from None


def load_split(split: str, data_dir: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Load one split: ``x`` uint8 (N, 28, 28) and ``y`` uint8 (N,), N = 60000 or 10000."""
    source = resolve_source(data_dir)
    images_spec, labels_spec = files_for(split)
    x, _ = load_file(images_spec, source)
    y, _ = load_file(labels_spec, source)
    return x, y


def load_data(data_dir: str | os.PathLike | None = None
              ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Load Fashion-MNIST, every file verified, as Keras' loader returns it.

    Args:
        data_dir: a folder holding the four ``.gz`` files, read as is and never written;
            None: ``FMNIST_DATA_DIR``, else the download cache (filled on first use).

    Returns:
        ``(x_train, y_train), (x_test, y_test)``: ``x_train`` uint8 (60000, 28, 28),
            pixels 0..255, garments light on black; ``y_train`` uint8 (60000,), labels
            0..9 (see ``CLASS_NAMES``); ``x_test`` uint8 (10000, 28, 28); ``y_test``
            uint8 (10000,).

    Raises:
        DataError: a file is missing, unreadable or not genuine; the message names it
            and the fix.
    """
    return load_split("train", data_dir), load_split("test", data_dir)


@dataclass(frozen=True)
class FileReport:
    spec: DataFile
    path: Path
    verified: str | None  # how it verified, or None
    problem: str | None  # the error message when it did not
    array: np.ndarray | None  # the decoded file, when it verified


def inspect(data_dir: str | os.PathLike | None = None) -> tuple[DataSource, list[FileReport]]:
    """Check every file (downloading into the cache when missing) without stopping at the first error."""
    source = resolve_source(data_dir)
    reports = []
    for spec in FILES:
        try:
            array, how = load_file(spec, source)
        except DataError as error:
            reports.append(FileReport(spec, source.directory / spec.name, None, str(error), None))
        else:
            reports.append(FileReport(spec, source.directory / spec.name, how, None, array))
    return source, reports
