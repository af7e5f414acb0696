"""advrep.data: every layout, written here in its official format with tiny random images,
plus the download path against a local HTTP server. Nothing touches the network."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import json
import os
import pickle
import shutil
import socket
import struct
import subprocess
import sys
import tarfile
import threading
import warnings
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from advrep import data
from advrep.data import download as dl
from advrep.data import formats
from advrep.errors import ConfigError, DataError

IDX = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
       "t10k-labels-idx1-ubyte")


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


RNG = np.random.default_rng(0)


def rand(shape, high=256) -> np.ndarray:
    return RNG.integers(0, high, shape).astype(np.uint8)


@pytest.fixture
def no_md5(monkeypatch):
    """Hand-made files never match the official md5s: test their structure without the table."""
    monkeypatch.setattr(dl, "OFFICIAL", {})


# ------------------------------------------------------------------ official writers


def write_cifar(folder: Path, dataset: str = "cifar10") -> dict[str, np.ndarray]:
    """Official pickles (4 images per cifar10 train batch, 10 test images); returns the rows."""
    if dataset == "cifar10":
        sub, key, classes = "cifar-10-batches-py", b"labels", 10
        files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    else:
        sub, files, key, classes = "cifar-100-python", ["train", "test"], b"fine_labels", 100
    (folder / sub).mkdir(parents=True)
    rows, labels = [], []
    for name in files:
        n = 10 if "test" in name else 20 // (len(files) - 1)
        x, y = rand((n, 3072)), rand((n,), classes).tolist()
        with open(folder / sub / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), key: y, b"data": x,
                         b"filenames": [b"img.png"] * n}, f, protocol=2)
        rows.append(x)
        labels.append(y)
    return {"train": np.concatenate(rows[:-1]), "y_train": np.concatenate(labels[:-1]),
            "test": rows[-1], "y_test": np.array(labels[-1])}


def tar_up(folder: Path, sub: str, archive: str) -> Path:
    with tarfile.open(folder / archive, "w:gz") as tar:
        tar.add(folder / sub, arcname=sub)
    shutil.rmtree(folder / sub)
    return folder / archive


def idx_bytes(a: np.ndarray) -> bytes:
    return bytes([0, 0, 8, a.ndim]) + b"".join(d.to_bytes(4, "big") for d in a.shape) + a.tobytes()


def write_idx(folder: Path, gz: bool, n_train: int = 20, n_test: int = 10) -> dict[str, np.ndarray]:
    arrays = dict(zip(IDX, (rand((n_train, 28, 28)), rand((n_train,), 10), rand((n_test, 28, 28)),
                            rand((n_test,), 10))))
    folder.mkdir(parents=True, exist_ok=True)
    for stem, a in arrays.items():
        raw = idx_bytes(a)
        (folder / (stem + ".gz" * gz)).write_bytes(gzip.compress(raw) if gz else raw)
    return arrays


def write_svhn(folder: Path, compress: bool) -> dict[str, np.ndarray]:
    from scipy.io import savemat  # an independent writer for advrep's own reader

    out = {}
    for split, n in (("train", 20), ("test", 10)):
        x, y = rand((32, 32, 3, n)), rand((n, 1), 10).astype(np.float64) + 1  # labels 1..10
        savemat(folder / f"{split}_32x32.mat", {"X": x, "y": y, "note": "not numeric"},
                do_compression=compress)
        out[split], out["y_" + split] = x, y
    return out


def write_npz(folder: Path, names=("train", "test"), shape=(32, 32, 3), n=8, classes=10) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in names:
        # every split cycles through the same labels: a test label no training image has is an error
        x, y = rand((n, *shape)), np.random.default_rng(len(name)).permutation(np.arange(n) % classes)
        np.savez(folder / f"{name}.npz", x=x, y=y)
        out[name] = (x, y)
    return out


# ------------------------------------------------------------------------- layouts


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_cifar_pickles_load_as_nchw_in_official_order(tmp_path, no_md5, dataset):
    rows = write_cifar(tmp_path, dataset)
    s = data.load(dataset, tmp_path)
    assert s.x_train.shape == (20, 3, 32, 32) and s.x_test.shape == (10, 3, 32, 32)
    assert s.x_train.dtype == torch.uint8 and s.y_train.dtype == torch.int64
    assert s.x_train.is_contiguous() and s.x_train.device.type == "cpu"
    assert np.array_equal(s.x_train.reshape(20, -1).numpy(), rows["train"])
    assert np.array_equal(s.x_train[3, 0].flatten().numpy(), rows["train"][3, :1024])  # R plane first
    assert s.x_train[5, 2, 0, 1] == rows["train"][5, 2048 + 1]  # row-major inside a plane
    assert np.array_equal(s.x_test.reshape(10, -1).numpy(), rows["test"])
    assert s.y_train.tolist() == rows["y_train"].tolist() and s.y_test.tolist() == rows["y_test"].tolist()
    assert s.info == data.DATASETS.get(dataset).info and "(official)" in s.source


def test_pickles_from_numpy_1_load_without_warnings(tmp_path, no_md5):
    """The official pickles name numpy.core.multiarray, which numpy 2 renamed numpy._core."""
    rows = write_cifar(tmp_path)
    for path in (tmp_path / "cifar-10-batches-py").iterdir():
        path.write_bytes(path.read_bytes().replace(b"numpy._core.", b"numpy.core."))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = data.load("cifar10", tmp_path)
    assert np.array_equal(s.x_test.reshape(10, -1).numpy(), rows["test"])


def test_cifar_archive_is_extracted_and_then_reused(tmp_path, no_md5):
    rows = write_cifar(tmp_path)
    tar_up(tmp_path, "cifar-10-batches-py", "cifar-10-python.tar.gz")
    s = data.load("cifar10", tmp_path)
    assert np.array_equal(s.x_train.reshape(20, -1).numpy(), rows["train"])
    assert (tmp_path / "cifar-10-batches-py" / "test_batch").is_file()
    (tmp_path / "cifar-10-python.tar.gz").unlink()
    assert torch.equal(data.load("cifar10", tmp_path).x_test, s.x_test)


@pytest.mark.parametrize("member", ["../evil", "/tmp/advrep-evil", "link"])
def test_unsafe_archive_members_are_refused(tmp_path, no_md5, member):
    folder = tmp_path / "d"
    folder.mkdir()
    with tarfile.open(folder / "cifar-10-python.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo(member)
        if member == "link":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        else:
            info.size = 4
            tar.addfile(info, io.BytesIO(b"evil"))
    with pytest.raises(DataError, match="refusing to extract"):
        data.load("cifar10", folder)
    assert not (tmp_path / "evil").exists() and not Path("/tmp/advrep-evil").exists()


@pytest.mark.parametrize("dataset, sub", [("mnist", ""), ("mnist", "raw"), ("mnist", "MNIST/raw"),
                                          ("fashion-mnist", "FashionMNIST/raw")])
@pytest.mark.parametrize("gz", [False, True])
def test_idx_files_plain_or_gz(tmp_path, no_md5, dataset, sub, gz):
    a = write_idx(tmp_path / sub, gz)
    s = data.load(dataset, tmp_path)
    assert s.x_train.shape == (20, 1, 28, 28) and s.x_test.shape == (10, 1, 28, 28)
    assert np.array_equal(s.x_train[:, 0].numpy(), a[IDX[0]])
    assert np.array_equal(s.x_test[:, 0].numpy(), a[IDX[2]])
    assert s.y_train.tolist() == a[IDX[1]].tolist() and s.y_test.dtype == torch.int64
    assert s.info.name == dataset and s.source == f"{tmp_path / sub} (official)"


@pytest.mark.parametrize("compress", [False, True])
def test_svhn_mat_files(tmp_path, no_md5, compress):
    a = write_svhn(tmp_path, compress)
    s = data.load("svhn", tmp_path)
    assert s.x_train.shape == (20, 3, 32, 32) and s.x_train.is_contiguous()
    assert np.array_equal(s.x_train.permute(2, 3, 1, 0).numpy(), a["train"])  # [h, w, c, n]
    assert np.array_equal(s.x_test.permute(2, 3, 1, 0).numpy(), a["test"])
    assert s.y_train.tolist() == (a["y_train"][:, 0] % 10).tolist()  # label 10 is digit 0
    assert s.info.augment == "none"


@pytest.mark.parametrize("endian", ["<", ">"])
@pytest.mark.parametrize("compress", [False, True])
def test_mat_reader_small_elements_and_narrow_storage(tmp_path, endian, compress):
    """MATLAB stores a double array of small integers as uint8 and a short name in 4 bytes."""
    def element(kind, payload):
        return struct.pack(endian + "II", kind, len(payload)) + payload + b"\0" * (-len(payload) % 8)

    matrix = element(14, element(6, struct.pack(endian + "II", 6, 0))  # mxDOUBLE_CLASS
                     + element(5, struct.pack(endian + "ii", 2, 3))
                     + struct.pack(endian + "I", (1 << 16) | 1) + b"a\0\0\0"  # small miINT8 name
                     + element(2, bytes(range(1, 7))))
    if compress:
        blob = zlib.compress(matrix)
        matrix = struct.pack(endian + "II", 15, len(blob)) + blob
    header = b"MATLAB 5.0 MAT-file".ljust(124) + struct.pack(endian + "H", 0x0100)
    path = tmp_path / "a.mat"
    path.write_bytes(header + (b"IM" if endian == "<" else b"MI") + matrix)
    a = formats.read_mat(path)["a"]
    assert a.dtype == np.float64 and a.tolist() == [[1, 3, 5], [2, 4, 6]]  # column-major


def test_mat_v73_and_npy_are_refused(tmp_path):
    mat = tmp_path / "train_32x32.mat"
    mat.write_bytes(b"MATLAB 7.3 MAT-file".ljust(124) + struct.pack("<H", 0x0200) + b"IM" + bytes(512))
    with pytest.raises(DataError, match=f"{mat} is MAT version 0x0200, not 5"):
        formats.read_mat(mat)
    np.save(tmp_path / "x.npy", np.zeros(3))
    with pytest.raises(DataError, match="is not an npz archive"):
        formats.read_npz((tmp_path / "x.npy").rename(tmp_path / "test.npz"))


def test_npz_files_are_joined_in_natural_order(tmp_path):
    parts = write_npz(tmp_path, ["train-10", "train-2", "train-1", "test"])
    s = data.load("cifar10", tmp_path)
    order = [parts[k] for k in ("train-1", "train-2", "train-10")]
    assert np.array_equal(s.x_train.permute(0, 2, 3, 1).numpy(), np.concatenate([x for x, _ in order]))
    assert s.y_train.tolist() == np.concatenate([y for _, y in order]).tolist()
    assert s.x_train.is_contiguous() and s.source == f"{tmp_path} (npz)"


@pytest.mark.parametrize("shape", [(28, 28), (28, 28, 1)])
def test_npz_grayscale_as_nhw_or_nhwc(tmp_path, shape):
    parts = write_npz(tmp_path, shape=shape)
    s = data.load("mnist", tmp_path)
    assert s.x_train.shape == (8, 1, 28, 28) and s.x_train.is_contiguous()
    assert np.array_equal(s.x_test.flatten().numpy(), parts["test"][0].flatten())


def test_npz_dataset_infers_its_info(tmp_path):
    parts = write_npz(tmp_path, classes=4)
    info = data.load("npz", tmp_path).info
    x = parts["train"][0].reshape(-1, 3) / 255
    assert (info.name, info.channels, info.image_size, info.family, info.augment) == \
        ("npz", 3, 32, "cifar", "crop-flip")
    assert info.num_classes == max(parts["train"][1].max(), parts["test"][1].max()) + 1
    assert np.allclose(info.mean, x.mean(0)) and np.allclose(info.std, x.std(0))
    write_npz(tmp_path / "gray", shape=(28, 28))
    gray = data.load("npz", tmp_path / "gray").info
    assert (gray.channels, gray.family, gray.augment) == (1, "mnist", "none")


@pytest.mark.parametrize("kwargs, match", [
    (dict(shape=(32, 32, 3)), "mnist images are 28x28"),
    (dict(shape=(28, 28), classes=11), "labels up to 10, but mnist has 10 classes"),
])
def test_npz_that_does_not_fit_the_dataset(tmp_path, kwargs, match):
    write_npz(tmp_path, n=64, **kwargs)
    with pytest.raises(DataError, match=match) as e:
        data.load("mnist", tmp_path)
    assert str(tmp_path / "t") in str(e.value)


def test_npz_missing_key_or_split(tmp_path):
    np.savez(tmp_path / "train.npz", images=rand((2, 28, 28)), y=np.zeros(2, np.int64))
    with pytest.raises(DataError, match="no test.npz"):
        data.load("mnist", tmp_path)
    np.savez(tmp_path / "test.npz", x=rand((2, 28, 28)), y=np.zeros(2, np.int64))
    with pytest.raises(DataError, match=f"{tmp_path / 'train.npz'} has no key 'x'"):
        data.load("mnist", tmp_path)


# --------------------------------------------------------------------- bad inputs


def _truncate(path: Path) -> Path:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


@pytest.mark.parametrize("layout", ["npz", "pickle", "tar.gz", "idx", "idx.gz", "mat", "mat-zlib"])
def test_truncated_file_names_its_path(tmp_path, no_md5, layout):
    name = {"pickle": "cifar10", "tar.gz": "cifar10", "mat": "svhn", "mat-zlib": "svhn"}.get(layout, "mnist")
    if layout == "npz":
        write_npz(tmp_path, shape=(28, 28), n=500)
        bad = tmp_path / "test.npz"
    elif layout == "pickle":
        write_cifar(tmp_path)
        bad = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    elif layout == "tar.gz":
        write_cifar(tmp_path)
        bad = tar_up(tmp_path, "cifar-10-batches-py", "cifar-10-python.tar.gz")
    elif layout.startswith("idx"):
        write_idx(tmp_path, gz=layout == "idx.gz")
        bad = tmp_path / (IDX[2] + ".gz" * (layout == "idx.gz"))
    else:
        write_svhn(tmp_path, compress=layout == "mat-zlib")
        bad = tmp_path / "train_32x32.mat"
    _truncate(bad)
    with pytest.raises(DataError) as e:
        data.load(name, tmp_path)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)


def test_missing_or_empty_data_dir(tmp_path):
    with pytest.raises(DataError, match=f"data directory {tmp_path / 'nope'} does not exist"):
        data.load("cifar10", tmp_path / "nope")
    with pytest.raises(DataError, match="no cifar10 data in .*: expected train\\*.npz \\+ test.npz, "
                                        "cifar-10-batches-py/ or cifar-10-python.tar.gz; pass --data-dir"):
        data.load("cifar10", tmp_path)


def test_partial_official_folder_names_the_missing_file(tmp_path, no_md5):
    write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3 is missing and there is no .*tar.gz"):
        data.load("cifar10", tmp_path)


class _Boom:
    def __init__(self, flag: Path):
        self.flag = flag

    def __reduce__(self):
        return os.system, (f"touch {self.flag}",)


def test_malicious_pickle_is_refused(tmp_path, no_md5):
    write_cifar(tmp_path)
    flag = tmp_path / "pwned"
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "wb") as f:
        pickle.dump({b"data": _Boom(flag)}, f, protocol=2)
    with pytest.raises(DataError, match=r"refusing to unpickle (posix|os)\.system from .*data_batch_1"):
        data.load("cifar10", tmp_path)
    assert not flag.exists()


def test_official_md5s_are_checked_in_a_users_folder(tmp_path, monkeypatch):
    write_cifar(tmp_path)  # real table: the tiny pickles cannot match
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    with pytest.raises(DataError, match=f"{batch} is corrupt or partial: md5 {md5(batch)}, expected "
                                        "c99cafc152244af753f735de768cd75f; delete it"):
        data.load("cifar10", tmp_path)
    assert batch.exists()  # never deleted outside the cache
    sums = {p.name: dl.Remote(p.name, md5(p)) for p in batch.parent.iterdir()}
    monkeypatch.setitem(dl.OFFICIAL, "cifar10", sums)
    assert data.load("cifar10", tmp_path).x_train.shape == (20, 3, 32, 32)


def test_registry_and_infos():
    assert data.DATASETS.names() == ["cifar10", "cifar100", "fashion-mnist", "mnist", "npz", "svhn", "tiny-imagenet"]
    with pytest.raises(ConfigError, match="did you mean 'cifar10'"):
        data.load("cifar")
    c100 = data.DATASETS.get("cifar100").info
    assert c100.num_classes == len(c100.classes) == len(set(c100.classes)) == 100
    assert data.DATASETS.get("mnist").info.family == "mnist"


# ------------------------------------------------------------------------ download


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A local HTTP server for tmp_path/www, with ADVREP_DATA pointing at tmp_path/cache."""
    root = tmp_path / "www"
    root.mkdir()
    hits = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self):
            hits.append(self.path.lstrip("/"))
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    monkeypatch.setenv("ADVREP_DATA", str(tmp_path / "cache"))
    yield SimpleNamespace(root=root, url=f"http://127.0.0.1:{httpd.server_port}/", hits=hits,
                          cache=tmp_path / "cache")
    httpd.shutdown()
    httpd.server_close()


def dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/"


def serve(monkeypatch, server, dataset, names, md5s=None, extra=()):
    """Point the table's entries for ``names`` (files in server.root) at the server."""
    table = {n: dl.Remote(n, (md5s or {}).get(n) or md5(server.root / n),
                          (*extra, server.url + n)) for n in names}
    monkeypatch.setitem(dl.OFFICIAL, dataset, table)
    return table


def test_download_verify_extract_and_reuse(server, monkeypatch):
    rows = write_cifar(server.root)
    members = {p.name: md5(p) for p in (server.root / "cifar-10-batches-py").iterdir()}
    tar_up(server.root, "cifar-10-batches-py", "cifar-10-python.tar.gz")
    table = serve(monkeypatch, server, "cifar10", ["cifar-10-python.tar.gz"])
    table.update({n: dl.Remote(n, m, archive="cifar-10-python.tar.gz") for n, m in members.items()})

    s = data.load("cifar10")  # with a progress bar
    assert server.hits == ["cifar-10-python.tar.gz"]
    assert np.array_equal(s.x_train.reshape(20, -1).numpy(), rows["train"])
    folder = server.cache / "cifar10"
    assert (folder / "cifar-10-python.tar.gz").is_file() and not list(folder.glob("*.part"))
    assert s.source == f"{folder / 'cifar-10-batches-py'} (official)"

    data.load("cifar10")
    assert len(server.hits) == 1  # cached: no second download
    (folder / "cifar-10-batches-py" / "data_batch_4").write_bytes(b"garbage")
    assert torch.equal(data.load("cifar10").x_train, s.x_train)  # re-extracted from the archive
    assert len(server.hits) == 1
    (folder / "cifar-10-python.tar.gz").write_bytes(b"garbage")
    shutil.rmtree(folder / "cifar-10-batches-py")
    assert torch.equal(data.load("cifar10", progress=False).x_test, s.x_test)
    assert len(server.hits) == 2  # the corrupt archive was fetched again


def test_download_falls_back_to_the_next_url_and_repairs_the_cache(server, monkeypatch, caplog):
    arrays = write_idx(server.root, gz=True)
    serve(monkeypatch, server, "mnist", [s + ".gz" for s in IDX], extra=(dead_url() + "x",))
    s = data.load("mnist", progress=False)
    assert np.array_equal(s.x_train[:, 0].numpy(), arrays[IDX[0]]) and len(server.hits) == 4
    (server.cache / "mnist" / (IDX[0] + ".gz")).write_bytes(b"junk")
    assert torch.equal(data.load("mnist", progress=False).x_train, s.x_train)
    assert server.hits[4:] == [IDX[0] + ".gz"]
    assert f"{server.cache / 'mnist' / IDX[0]}.gz is corrupt or partial" in caplog.text


def test_download_with_wrong_md5_leaves_no_file(server, monkeypatch):
    write_svhn(server.root, compress=True)
    names = ["train_32x32.mat", "test_32x32.mat"]
    serve(monkeypatch, server, "svhn", names, md5s={n: "0" * 32 for n in names})
    dest = server.cache / "svhn" / "train_32x32.mat"
    with pytest.raises(DataError, match=f"could not download {dest}: .* gave md5 .*, expected 0{{32}}"):
        data.load("svhn", progress=False)
    assert not dest.exists() and not list(dest.parent.iterdir())


def test_network_failure_names_the_url(tmp_path, monkeypatch):
    monkeypatch.setenv("ADVREP_DATA", str(tmp_path))
    url = dead_url() + "train_32x32.mat"
    entry = dl.Remote("train_32x32.mat", "0" * 32, (url,))
    monkeypatch.setitem(dl.OFFICIAL, "svhn", {entry.name: entry})
    with pytest.raises(DataError, match=f"{url} failed .*pass --data-dir"):
        data.load("svhn", progress=False)
    with pytest.raises(DataError, match="svhn data in .*allow downloading"):
        data.load("svhn", download=False)


def test_a_mirror_replaces_the_urls_but_not_the_md5s(server, monkeypatch):
    """ADVREP_MIRROR: files come from <mirror>/<dataset>/<name> and only from there, and are
    still checked against the official md5s (the tiny files served here cannot match them)."""
    write_idx(server.root / "mnist", gz=True)
    monkeypatch.setenv("ADVREP_MIRROR", server.url)
    entry = dl.remote("mnist", IDX[0] + ".gz")
    assert entry.urls == (f"{server.url}mnist/{IDX[0]}.gz",) and entry.md5 == "f68b3c2dcbeaaa9fbdd348bbdeb94873"
    assert dl.remote("cifar10", "data_batch_1").urls == ()  # an archive member is never fetched
    dest = server.cache / "mnist" / (IDX[0] + ".gz")
    with pytest.raises(DataError, match=f"could not download {dest}: {server.url}mnist/{IDX[0]}.gz gave md5 "
                                        f"{md5(server.root / 'mnist' / (IDX[0] + '.gz'))}, expected f68b3c2d"):
        data.load("mnist", progress=False)
    assert server.hits == [f"mnist/{IDX[0]}.gz"] and not list(dest.parent.iterdir())


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("ADVREP_DATA", str(tmp_path))
    assert data.cache_dir() == tmp_path
    monkeypatch.delenv("ADVREP_DATA")
    assert data.cache_dir() == Path.home() / ".cache" / "advrep"


# ----------------------------------------------------------------------- real data


def test_real_mnist(shared):
    s = data.load("mnist", shared("mnist"))
    assert s.x_train.shape == (60000, 1, 28, 28) and s.x_train.dtype == torch.uint8
    assert s.x_test.shape == (10000, 1, 28, 28) and s.y_test.shape == (10000,)
    assert s.y_train.bincount().tolist()[:3] == [5923, 6742, 5958]
    assert abs(s.x_train.float().mean().item() / 255 - 0.1307) < 1e-4


@pytest.mark.slow
def test_real_cifar10(shared):
    folder = shared("cifar10")
    s = data.load("cifar10", folder)
    assert s.x_train.shape == (50000, 3, 32, 32) and s.x_test.shape == (10000, 3, 32, 32)
    assert s.x_train.is_contiguous() and s.y_train.bincount().tolist() == [5000] * 10
    with np.load(folder / "train-5.npz") as f:
        assert np.array_equal(s.x_train[-1].numpy(), f["x"][-1].transpose(2, 0, 1))
    mean = s.x_train[:5000].double().mean((0, 2, 3)) / 255
    assert np.allclose(mean.numpy(), s.info.mean, atol=0.01)


# ------------------------------------------------------------------- a fresh machine

# Tests of the suite that read real MNIST through the `shared` fixture and pass on a few
# hundred images (TINY trains on 256 and validates on 64).
FRESH_TESTS = ["tests/test_train.py::test_truncated_data_file_is_named",
               "tests/test_train.py::test_existing_run_directory_is_not_overwritten"]
# The subprocess's pytest, with the md5 table's MNIST entries set to those of the files this
# test serves: the same in-process override the download tests above make with monkeypatch.
# advrep itself has no way to change a checksum; the mirror only changes where bytes come from.
RUN_WITH_MD5S = """import dataclasses, json, sys, pytest
from advrep.data import download as dl
for name, md5 in json.loads(sys.argv[1]).items():
    dl.OFFICIAL["mnist"][name] = dataclasses.replace(dl.OFFICIAL["mnist"][name], md5=md5)
sys.exit(pytest.main(sys.argv[2:]))
"""


def fresh_machine(tmp_path: Path, mirror: str, md5s: dict[str, str]) -> subprocess.CompletedProcess:
    """FRESH_TESTS in a pytest subprocess on a machine without the shared data folder, with an
    empty data cache and the downloader pointed at ``mirror``."""
    env = {**os.environ, "ADVREP_SHARED_DATA": str(tmp_path / "no-shared-data"),
           "ADVREP_DATA": str(tmp_path / "fresh-cache"), "ADVREP_MIRROR": mirror}
    root = Path(__file__).resolve().parents[1]
    return subprocess.run([sys.executable, "-c", RUN_WITH_MD5S, json.dumps(md5s), "-q", "-p", "no:cacheprovider",
                           *FRESH_TESTS], cwd=root, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_a_fresh_machine_downloads_mnist_through_the_mirror_and_passes(server, tmp_path):
    arrays = write_idx(server.root / "mnist", gz=True, n_train=400, n_test=100)
    names = [stem + ".gz" for stem in IDX]
    md5s = {n: md5(server.root / "mnist" / n) for n in names}
    run = fresh_machine(tmp_path, server.url, md5s)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"{len(FRESH_TESTS)} passed" in run.stdout
    assert sorted(server.hits) == sorted(f"mnist/{n}" for n in names), "each file once, from the mirror"
    cache = tmp_path / "fresh-cache"
    assert sorted(p.name for p in (cache / "mnist").iterdir()) == sorted(names)
    with np.load(cache / "shared" / "mnist" / "train.npz") as f:  # the shared folder's layout
        assert np.array_equal(f["x"], arrays[IDX[0]]) and np.array_equal(f["y"], arrays[IDX[1]])
    with np.load(cache / "shared" / "mnist" / "test.npz") as f:
        assert np.array_equal(f["x"], arrays[IDX[2]]) and f["y"].dtype == np.int64


def test_a_fresh_machine_without_a_download_fails_with_one_line(tmp_path):
    url = dead_url()
    run = fresh_machine(tmp_path, url, {})
    assert run.returncode == 1 and f"{len(FRESH_TESTS)} failed" in run.stdout
    missing = tmp_path / "no-shared-data" / "mnist"
    line = next((line for line in run.stdout.splitlines() if f"{missing} is missing" in line), run.stdout)
    assert ("mnist could not be downloaded; put the mnist folder (npz layout, see shared/data/README.md) in "
            f"{missing.parent}, or set ADVREP_SHARED_DATA to the folder that holds mnist/") in line
    assert f"{url}mnist/{IDX[0]}.gz failed" in line
    assert not (tmp_path / "fresh-cache" / "shared").exists()


def test_a_missing_shared_cifar10_is_made_from_the_download_in_the_shared_layout(server, monkeypatch, tmp_path):
    """The shared folder's CIFAR-10 layout: train-1 ... train-5 (the official batches) + test.npz."""
    import conftest

    rows = write_cifar(server.root)
    members = {p.name: md5(p) for p in (server.root / "cifar-10-batches-py").iterdir()}
    tar_up(server.root, "cifar-10-batches-py", "cifar-10-python.tar.gz")
    table = serve(monkeypatch, server, "cifar10", ["cifar-10-python.tar.gz"])
    table.update({n: dl.Remote(n, m, archive="cifar-10-python.tar.gz") for n, m in members.items()})
    monkeypatch.setattr(conftest, "SHARED", tmp_path / "no-shared-data")
    monkeypatch.setattr(conftest, "USER_CACHE", server.cache)
    monkeypatch.setattr(conftest, "_downloaded", {})
    folder = conftest.shared_folder("cifar10")
    assert folder == server.cache / "shared" / "cifar10"
    assert sorted(p.name for p in folder.iterdir()) == ["test.npz", *(f"train-{i}.npz" for i in range(1, 6))]
    with np.load(folder / "train-2.npz") as f:  # data_batch_2, HWC
        assert f["x"].shape == (4, 32, 32, 3) and np.array_equal(f["x"].transpose(0, 3, 1, 2).reshape(4, -1),
                                                                 rows["train"][4:8])
    s = data.load("cifar10", folder)
    assert np.array_equal(s.x_test.reshape(10, -1).numpy(), rows["test"])
    assert s.y_train.tolist() == rows["y_train"].tolist()
    assert conftest.shared_folder("cifar10") == folder and server.hits == ["cifar-10-python.tar.gz"]
