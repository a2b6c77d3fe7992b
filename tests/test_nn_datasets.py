"""modopt.nn.datasets on tiny synthetic MNIST (IDX) and CIFAR-10 (binary) files.

The files are written here byte by byte from known arrays (IDX headers with
``struct``, CIFAR records with an explicit index formula), read back and compared
exactly; corrupt, truncated and missing files must raise errors that name them.
"""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from modopt.nn import DATASETS, load_cifar10, load_dataset, load_mnist
from modopt.nn.data import load_digits_split

MNIST_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
CIFAR_TRAIN = [f"data_batch_{i}.bin" for i in range(1, 6)]


# ----------------------------------------------------------------------------- writers


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes: 0x0000, type 0x08, ndim, big-endian dims, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + bytes(array.astype(np.uint8).reshape(-1).tolist())


def write(path, data: bytes, gz: bool = False):
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as file:
            file.write(data)
    else:
        path.write_bytes(data)


def mnist_arrays(seed=0, n_train=5, n_test=3):
    rng = np.random.default_rng(seed)
    return {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }


def write_mnist(folder, arrays, gz=()):
    folder.mkdir(parents=True, exist_ok=True)
    for key, name in MNIST_NAMES.items():
        write(folder / name, idx_bytes(arrays[key]), gz=key in gz)


def cifar_record(label: int, image: np.ndarray) -> bytes:
    """One record: the label, then pixel (row r, column c, channel ch) at
    ``1 + 1024 * ch + 32 * r + c`` (channel-major, rows row-major)."""
    record = bytearray(3073)
    record[0] = label
    for ch in range(3):
        for r in range(32):
            for c in range(32):
                record[1 + 1024 * ch + 32 * r + c] = int(image[r, c, ch])
    return bytes(record)


def cifar_arrays(seed=0, per_batch=2, n_test=3):
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(6):
        n = per_batch if len(batches) < 5 else n_test
        batches.append(
            (
                rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                rng.integers(0, 10, n, dtype=np.uint8),
            )
        )
    return batches


def write_cifar(folder, batches):
    folder.mkdir(parents=True, exist_ok=True)
    for name, (images, labels) in zip([*CIFAR_TRAIN, "test_batch.bin"], batches):
        data = b"".join(cifar_record(int(y), x) for x, y in zip(images, labels))
        (folder / name).write_bytes(data)


# ----------------------------------------------------------------------------- MNIST


@pytest.mark.parametrize("gz", [(), ("test_images", "test_labels"), tuple(MNIST_NAMES)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mnist_round_trip(tmp_path, gz, dtype):
    arrays = mnist_arrays()
    write_mnist(tmp_path, arrays, gz=gz)
    x_train, y_train, x_test, y_test = load_mnist(tmp_path, dtype=dtype)
    for x, key in ((x_train, "train_images"), (x_test, "test_images")):
        n = len(arrays[key])
        expected = np.array(
            [[arrays[key][i, p // 28, p % 28] / 255.0 for p in range(784)] for i in range(n)]
        ).astype(dtype)
        assert x.dtype == dtype and x.shape == (n, 784)
        np.testing.assert_array_equal(x, expected)
        assert x.min() >= 0 and x.max() <= 1
    for y, key in ((y_train, "train_labels"), (y_test, "test_labels")):
        assert y.dtype == np.int32
        np.testing.assert_array_equal(y, arrays[key].astype(np.int64))


def test_mnist_wrong_magic(tmp_path):
    arrays = mnist_arrays()
    write_mnist(tmp_path, arrays)
    path = tmp_path / MNIST_NAMES["train_labels"]
    data = bytearray(path.read_bytes())
    data[3] = 0x03  # claims 3 dimensions: the images' magic number in a labels file
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte.*magic number"):
        load_mnist(tmp_path)


def test_mnist_swapped_files(tmp_path):
    arrays = mnist_arrays()
    write_mnist(tmp_path, arrays)
    images = tmp_path / MNIST_NAMES["test_images"]
    labels = tmp_path / MNIST_NAMES["test_labels"]
    content = images.read_bytes()
    images.write_bytes(labels.read_bytes())
    labels.write_bytes(content)
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.*magic number"):
        load_mnist(tmp_path)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_truncated(tmp_path, gz):
    arrays = mnist_arrays()
    write_mnist(tmp_path, arrays)
    name = MNIST_NAMES["train_images"]
    data = (tmp_path / name).read_bytes()
    (tmp_path / name).unlink()
    write(tmp_path / name, data[:-7], gz=gz)
    with pytest.raises(ValueError, match=f"{name}.*truncated"):
        load_mnist(tmp_path)


def test_mnist_header_only_and_extra_bytes(tmp_path):
    arrays = mnist_arrays()
    write_mnist(tmp_path, arrays)
    path = tmp_path / MNIST_NAMES["test_labels"]
    path.write_bytes(path.read_bytes()[:6])
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.*truncated"):
        load_mnist(tmp_path)
    write_mnist(tmp_path, arrays)
    path.write_bytes(path.read_bytes() + b"\x00")
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.*corrupt"):
        load_mnist(tmp_path)


def test_mnist_broken_gzip(tmp_path):
    arrays = mnist_arrays()
    write_mnist(tmp_path, arrays)
    (tmp_path / MNIST_NAMES["test_images"]).unlink()
    (tmp_path / (MNIST_NAMES["test_images"] + ".gz")).write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.gz.*gzip"):
        load_mnist(tmp_path)


def test_mnist_counts_and_labels_checked(tmp_path):
    arrays = mnist_arrays()
    arrays["train_labels"] = arrays["train_labels"][:-1]
    write_mnist(tmp_path, arrays)
    with pytest.raises(ValueError, match="5 images.*4 labels"):
        load_mnist(tmp_path)
    arrays = mnist_arrays()
    arrays["test_labels"][0] = 10
    write_mnist(tmp_path, arrays)
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.*label 10"):
        load_mnist(tmp_path)
    arrays = mnist_arrays()
    write_mnist(tmp_path, arrays)
    write(tmp_path / MNIST_NAMES["train_images"], idx_bytes(np.zeros((5, 27, 28))))
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.*27 x 28"):
        load_mnist(tmp_path)


def test_mnist_missing(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_mnist(tmp_path / "nowhere")
    for name in MNIST_NAMES.values():
        assert name in str(info.value)
    assert "nowhere" in str(info.value)

    arrays = mnist_arrays()
    write_mnist(tmp_path, arrays)
    (tmp_path / MNIST_NAMES["test_labels"]).unlink()
    with pytest.raises(FileNotFoundError) as info:
        load_mnist(tmp_path)
    message = str(info.value)
    assert message.startswith("MNIST: t10k-labels-idx1-ubyte (or the same with a .gz suffix)")
    assert str(tmp_path) in message and "IDX" in message


# ----------------------------------------------------------------------------- CIFAR-10


@pytest.mark.parametrize("nested", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cifar_round_trip(tmp_path, nested, dtype):
    batches = cifar_arrays()
    write_cifar(tmp_path / "cifar-10-batches-bin", batches)
    folder = tmp_path if nested else tmp_path / "cifar-10-batches-bin"
    x_train, y_train, x_test, y_test = load_cifar10(folder, dtype=dtype)
    train_images = np.concatenate([x for x, _ in batches[:5]])
    train_labels = np.concatenate([y for _, y in batches[:5]])
    for x, y, images, labels in (
        (x_train, y_train, train_images, train_labels),
        (x_test, y_test, *batches[5]),
    ):
        assert x.shape == (len(labels), 32, 32, 3) and x.dtype == dtype
        assert x.flags.c_contiguous
        np.testing.assert_array_equal(x, (images / 255.0).astype(dtype))
        assert y.dtype == np.int32
        np.testing.assert_array_equal(y, labels.astype(np.int64))


def test_cifar_truncated_and_bad_label(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    batches = cifar_arrays()
    write_cifar(folder, batches)
    path = folder / "data_batch_3.bin"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(ValueError, match="data_batch_3.bin.*truncated"):
        load_cifar10(tmp_path)
    write_cifar(folder, batches)
    path = folder / "test_batch.bin"
    data = bytearray(path.read_bytes())
    data[3073] = 10  # the label of the second record
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="test_batch.bin.*label 10"):
        load_cifar10(tmp_path)


def test_cifar_missing(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_cifar10(tmp_path / "nowhere")
    message = str(info.value)
    assert "nowhere" in message and "binary version" in message
    assert "https://www.cs.toronto.edu/~kriz/cifar.html" in message
    for name in [*CIFAR_TRAIN, "test_batch.bin"]:
        assert name in message

    write_cifar(tmp_path / "cifar-10-batches-bin", cifar_arrays())
    (tmp_path / "cifar-10-batches-bin" / "data_batch_5.bin").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_5.bin not found"):
        load_cifar10(tmp_path)


@pytest.mark.parametrize("point_at", ["parent", "python_folder"])
def test_cifar_pickled_version_refused(tmp_path, point_at):
    python = tmp_path / "cifar-10-batches-py"
    python.mkdir()
    for name in ("data_batch_1", "test_batch", "batches.meta"):
        (python / name).write_bytes(b"not to be unpickled")
    folder = tmp_path if point_at == "parent" else python
    with pytest.raises(FileNotFoundError) as info:
        load_cifar10(folder)
    message = str(info.value)
    assert "binary version" in message
    assert "pickle" in message and "arbitrary code" in message


# ----------------------------------------------------------------------------- dispatch


def test_load_dataset(tmp_path):
    assert DATASETS == ("digits", "mnist", "cifar10")
    with pytest.raises(ValueError, match="digits, mnist, cifar10"):
        load_dataset("imagenet")
    for name in ("mnist", "cifar10"):
        with pytest.raises(ValueError, match="folder"):
            load_dataset(name)

    write_mnist(tmp_path / "mnist", mnist_arrays())
    write_cifar(tmp_path / "cifar" / "cifar-10-batches-bin", cifar_arrays())
    for name, folder, loader in (
        ("mnist", tmp_path / "mnist", load_mnist),
        ("cifar10", tmp_path / "cifar", load_cifar10),
    ):
        for got, expected in zip(load_dataset(name, folder), loader(folder)):
            np.testing.assert_array_equal(got, expected)
    with pytest.raises(FileNotFoundError):
        load_dataset("mnist", tmp_path / "cifar")


def test_load_dataset_digits():
    pytest.importorskip("sklearn")
    for got, expected in zip(load_dataset("digits", seed=3), load_digits_split(seed=3)):
        np.testing.assert_array_equal(got, expected)
