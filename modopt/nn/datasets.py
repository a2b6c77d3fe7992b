"""MNIST and CIFAR-10 read from a folder the user names (nothing is downloaded).

MNIST is read from the IDX files of its original distribution and CIFAR-10 from its
*binary* version. The pickled Python version of CIFAR-10 is never read: unpickling a
file can execute arbitrary code.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from .data import load_digits_split

DATASETS = ("digits", "mnist", "cifar10")

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
MNIST_URL = "http://yann.lecun.com/exdb/mnist/"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
CIFAR10_DIR = "cifar-10-batches-bin"
CIFAR10_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR10_TEST = "test_batch.bin"

_IDX_UBYTE = 0x08
_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
_MNIST_SIDE = 28
_CIFAR_RECORD = 1 + 3 * 32 * 32
_CLASSES = 10


# ----------------------------------------------------------------------------- MNIST


def load_mnist(folder: str | os.PathLike, dtype=np.float32):
    """MNIST from the four IDX files of its original distribution.

    `folder` must hold ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each either plain or
    gzipped with a ``.gz`` suffix (the plain file is used when both exist).

    **Arguments:**

    - `folder`: the folder holding the four files.
    - `dtype`: the floating dtype of the images.

    **Returns:** ``(x_train, y_train, x_test, y_test)``: images flattened to shape
    ``(n, 784)`` (row-major 28 x 28) with pixels scaled to [0, 1]; ``int32`` labels in
    ``0..9``. Reshape to ``(n, 28, 28, 1)`` for a convolutional network.

    **Raises:** `FileNotFoundError` when the folder or a file is absent (the message says
    which files to put where); `ValueError` naming the file when one is corrupt or
    truncated (wrong magic number, sizes that disagree with the header, labels out of
    range, image and label counts that differ).
    """
    root = _existing_folder(folder, "MNIST", _mnist_help)
    paths, missing = [], []
    for name in MNIST_FILES:
        path = next((root / n for n in (name, name + ".gz") if (root / n).is_file()), None)
        if path is None:
            missing.append(name)
        paths.append(path)
    if missing:
        raise FileNotFoundError(
            f"MNIST: {', '.join(missing)} (or the same with a .gz suffix) not found in "
            f"{root}. {_mnist_help(root)}"
        )
    out = []
    for images_path, labels_path in (paths[:2], paths[2:]):
        images = _read_idx(images_path, _IMAGES_MAGIC, "images")
        labels = _read_idx(labels_path, _LABELS_MAGIC, "labels")
        if images.shape[1:] != (_MNIST_SIDE, _MNIST_SIDE):
            raise ValueError(
                f"{images_path}: images are {images.shape[1]} x {images.shape[2]} pixels, "
                f"MNIST images are {_MNIST_SIDE} x {_MNIST_SIDE}."
            )
        if len(images) != len(labels):
            raise ValueError(
                f"{images_path} holds {len(images)} images but {labels_path} holds "
                f"{len(labels)} labels."
            )
        out += [_scale(images.reshape(len(images), -1), dtype), _labels(labels, labels_path)]
    return tuple(out)


def _mnist_help(root: Path) -> str:
    return (
        f"Put the four IDX files of the original MNIST distribution ({MNIST_URL}, or a "
        f"mirror of it), {', '.join(MNIST_FILES)}, each plain or gzipped (.gz), directly "
        f"in {root}. modopt downloads nothing."
    )


def _read_idx(path: Path, magic: int, kind: str) -> np.ndarray:
    """The array in an IDX file of unsigned bytes, checked against its header."""
    data = _read_bytes(path)
    if len(data) < 4:
        raise ValueError(f"{path} is truncated: {len(data)} bytes, not even an IDX header.")
    (found,) = struct.unpack(">I", data[:4])
    if found != magic:
        raise ValueError(
            f"{path} is not an MNIST {kind} file: magic number 0x{found:08x}, expected "
            f"0x{magic:08x} (is it corrupt, or the wrong file?)."
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path} is truncated: its IDX header needs {header} bytes.")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(dims, dtype=np.int64))
    body = len(data) - header
    if body != expected:
        what = "truncated" if body < expected else "corrupt"
        raise ValueError(
            f"{path} is {what}: its header promises {'x'.join(map(str, dims))} = "
            f"{expected} bytes of data, the file holds {body}."
        )
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def _read_bytes(path: Path) -> bytes:
    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as file:
            return file.read()
    except (OSError, EOFError, zlib.error) as error:
        raise ValueError(f"{path} is not a readable gzip file ({error}).") from None


# ----------------------------------------------------------------------------- CIFAR-10


def load_cifar10(folder: str | os.PathLike, dtype=np.float32):
    """CIFAR-10 from its binary version.

    `folder` is either the ``cifar-10-batches-bin`` folder itself or a folder that
    contains it; it must hold ``data_batch_1.bin`` ... ``data_batch_5.bin`` (training
    set, in that order) and ``test_batch.bin``. Each record is one label byte followed
    by 3072 pixel bytes: the 32 x 32 red, then green, then blue channel, each row-major.

    The pickled Python version (``cifar-10-batches-py``) is never read, because
    unpickling a file can execute arbitrary code.

    **Arguments:**

    - `folder`: ``cifar-10-batches-bin`` or its parent.
    - `dtype`: the floating dtype of the images.

    **Returns:** ``(x_train, y_train, x_test, y_test)``: images of shape
    ``(n, 32, 32, 3)``, i.e. height, width, channel (HWC, channels RGB), pixels scaled
    to [0, 1]; ``int32`` labels in ``0..9``.

    **Raises:** `FileNotFoundError` when the folder or a batch file is absent (the
    message says which files to put where, and when only the pickled version is there,
    to get the binary one instead); `ValueError` naming the file when a batch is
    truncated or corrupt (a size that is not a whole number of records, a label out of
    range).
    """
    root = _existing_folder(folder, "CIFAR-10", _cifar_help)
    nested = root / CIFAR10_DIR
    batches = nested if nested.is_dir() else root
    names = (*CIFAR10_TRAIN, CIFAR10_TEST)
    missing = [n for n in names if not (batches / n).is_file()]
    if missing:
        pickled = _pickled_cifar(root)
        if pickled is not None and len(missing) == len(names):
            target = pickled.parent if pickled.name == "cifar-10-batches-py" else root
            raise FileNotFoundError(
                f"CIFAR-10: found only the pickled Python version in {pickled}. modopt "
                "does not read it, because unpickling a file can execute arbitrary code. "
                f"Use the binary version instead: {_cifar_help(target)}"
            )
        raise FileNotFoundError(
            f"CIFAR-10: {', '.join(missing)} not found in {batches}. {_cifar_help(root)}"
        )
    train = [_read_cifar_batch(batches / n) for n in CIFAR10_TRAIN]
    x_test, y_test = _read_cifar_batch(batches / CIFAR10_TEST)
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, y in train])
    return _scale(x_train, dtype), y_train, _scale(x_test, dtype), y_test


def _cifar_help(root: Path) -> str:
    archive = root / "cifar-10-binary.tar.gz"
    extract = f" {archive} is there: extract it." if archive.is_file() else ""
    return (
        f"Download the 'CIFAR-10 binary version' (cifar-10-binary.tar.gz) from "
        f"{CIFAR10_URL} and extract it in {root}, so that {root / CIFAR10_DIR} holds "
        f"{', '.join(CIFAR10_TRAIN)} and {CIFAR10_TEST} (or pass that "
        f"{CIFAR10_DIR} folder itself). modopt downloads nothing.{extract}"
    )


def _pickled_cifar(root: Path) -> Path | None:
    """Where the pickled Python version of CIFAR-10 is, if that is what `root` holds."""
    for candidate in (root / "cifar-10-batches-py", root):
        if (candidate / "data_batch_1").is_file() or (candidate / "batches.meta").is_file():
            return candidate
    return root if root.name == "cifar-10-batches-py" else None


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(uint8 images (n, 32, 32, 3), int32 labels)`` of one binary batch."""
    data = path.read_bytes()
    if not data or len(data) % _CIFAR_RECORD:
        raise ValueError(
            f"{path} is truncated or not a CIFAR-10 binary batch: {len(data)} bytes is not "
            f"a whole positive number of {_CIFAR_RECORD}-byte records."
        )
    records = np.frombuffer(data, np.uint8).reshape(-1, _CIFAR_RECORD)
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, _labels(records[:, 0], path)


# ----------------------------------------------------------------------------- shared


def _existing_folder(folder, name: str, help_for) -> Path:
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{name}: the folder {root} does not exist. {help_for(root)}")
    return root


def _scale(pixels: np.ndarray, dtype) -> np.ndarray:
    """Bytes to `dtype` in [0, 1] (a C-contiguous copy)."""
    if not np.issubdtype(np.dtype(dtype), np.floating):
        raise ValueError(f"dtype must be a floating dtype, got {np.dtype(dtype)}.")
    x = pixels.astype(dtype, order="C")
    x /= np.asarray(255, dtype)
    return x


def _labels(labels: np.ndarray, path: Path) -> np.ndarray:
    if labels.size and int(labels.max()) >= _CLASSES:
        raise ValueError(
            f"{path} is corrupt: label {int(labels.max())} is not a class in 0..9."
        )
    return labels.astype(np.int32)


def load_dataset(
    name: str, folder: str | os.PathLike | None = None, seed: int = 0, *, dtype=np.float32
):
    """One of `DATASETS` by name.

    **Arguments:**

    - `name`: ``"digits"`` (scikit-learn's 8x8 digits, `load_digits_split`),
      ``"mnist"`` (`load_mnist`) or ``"cifar10"`` (`load_cifar10`).
    - `folder`: the data folder; needed for ``"mnist"`` and ``"cifar10"``, unused for
      ``"digits"`` (which ships with scikit-learn).
    - `seed`: the seed of the random train/test split of ``"digits"``; MNIST and
      CIFAR-10 have fixed official splits.
    - `dtype`: the floating dtype of the images.

    **Returns:** ``(x_train, y_train, x_test, y_test)`` as the loader documents.

    **Raises:** `ValueError` for an unknown name or a missing `folder`; the loaders'
    own errors otherwise.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}.")
    if name == "digits":
        return load_digits_split(seed=seed, dtype=dtype)
    if folder is None:
        help_for = _mnist_help if name == "mnist" else _cifar_help
        raise ValueError(
            f"dataset {name!r} is read from a folder you name: pass folder=... "
            f"{help_for(Path('<folder>'))}"
        )
    loader = load_mnist if name == "mnist" else load_cifar10
    return loader(folder, dtype=dtype)
