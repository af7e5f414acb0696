"""The tiny-imagenet dataset entry, on small files written here in the official layout
(a zip of a few 64x64 JPEGs per class): class numbering, validation labels from the annotations
file, the decoded cache, the md5 check, and clear errors for a wrong layout."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from advrep import data
from advrep.data import download as dl
from advrep.data import tiny_imagenet
from advrep.errors import DataError

# Three classes, written in wnids.txt out of sorted order; advrep numbers them sorted.
WNIDS = ["n09999999", "n01443537", "n02124075"]
LABEL = {w: k for k, w in enumerate(sorted(WNIDS))}  # n01443537 -> 0, n02124075 -> 1, n09999999 -> 2
COLOUR = {"n01443537": (200, 30, 30), "n02124075": (30, 200, 30), "n09999999": (30, 30, 200)}
# The validation images in annotation order, with their classes (not grouped by class).
VAL = [("val_0.JPEG", "n02124075"), ("val_1.JPEG", "n09999999"), ("val_2.JPEG", "n01443537"),
       ("val_3.JPEG", "n02124075")]


def jpeg(colour, size=64, mode="RGB") -> bytes:
    """A flat image: JPEG keeps a flat colour within a few levels, so labels can be read back."""
    buf = io.BytesIO()
    img = Image.new("RGB", (size, size), colour)
    (img.convert("L") if mode == "L" else img).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def official_files(train_per_class=2, grey=True, size=64) -> dict[str, bytes]:
    files = {"tiny-imagenet-200/wnids.txt": ("\n".join(WNIDS) + "\n").encode(),
             "tiny-imagenet-200/words.txt": b"n01443537\tgoldfish\n"}
    for w in WNIDS:
        files[f"tiny-imagenet-200/train/{w}/{w}_boxes.txt"] = b""
        for i in range(train_per_class):
            files[f"tiny-imagenet-200/train/{w}/images/{w}_{i}.JPEG"] = jpeg(COLOUR[w], size)
    annotations = "".join(f"{name}\t{w}\t0\t0\t63\t63\n" for name, w in VAL)
    files["tiny-imagenet-200/val/val_annotations.txt"] = annotations.encode()
    for name, w in VAL:
        files[f"tiny-imagenet-200/val/images/{name}"] = jpeg(COLOUR[w], size)
    if grey:  # the official set holds some grayscale JPEGs; they must come out as RGB
        w = WNIDS[0]
        files[f"tiny-imagenet-200/train/{w}/images/{w}_grey.JPEG"] = jpeg(COLOUR[w], mode="L")
    files["tiny-imagenet-200/test/images/test_0.JPEG"] = jpeg((0, 0, 0))  # unlabeled: ignored
    return files


def write_zip(folder: Path, files: dict[str, bytes]) -> Path:
    path = folder / "tiny-imagenet-200.zip"
    with zipfile.ZipFile(path, "w") as z:
        for name, body in files.items():
            z.writestr(name, body)
    return path


def write_folder(folder: Path, files: dict[str, bytes]) -> None:
    for name, body in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(body)


@pytest.fixture
def table(monkeypatch):
    """Point the official md5 of the archive at the file a test writes."""

    def set_md5(path: Path):
        md5 = hashlib.md5(path.read_bytes()).hexdigest()
        monkeypatch.setitem(dl.OFFICIAL, "tiny-imagenet", {path.name: dl.Remote(path.name, md5)})

    return set_md5


def mean_colours(x) -> np.ndarray:
    return x.float().mean((2, 3)).numpy()


def check_splits(s) -> None:
    assert s.info.name == "tiny-imagenet" and s.info.num_classes == 200 and s.info.image_size == 64
    assert s.x_train.shape == (7, 3, 64, 64) and s.x_test.shape == (4, 3, 64, 64)
    # training images by class folder (sorted names), the grayscale one as three equal channels
    expected_train = [LABEL[w] for w in sorted(WNIDS) for _ in range(2)] + [LABEL[WNIDS[0]]]
    names = sorted([f"train/{w}/images/{w}_{i}.JPEG" for w in WNIDS for i in range(2)]
                   + [f"train/{WNIDS[0]}/images/{WNIDS[0]}_grey.JPEG"])
    by_name = [LABEL[n.split("/")[1]] for n in names]
    assert s.y_train.tolist() == by_name and sorted(by_name) == sorted(expected_train)
    colours = mean_colours(s.x_train)
    inverse = {k: w for w, k in LABEL.items()}
    for name, c, k in zip(names, colours, by_name):
        if name.endswith("_grey.JPEG"):
            assert np.ptp(c) < 1  # R = G = B
        else:
            assert np.abs(c - COLOUR[inverse[k]]).max() < 4
    # validation = the test split, in annotation order, labels from val_annotations.txt
    assert s.y_test.tolist() == [LABEL[w] for _, w in VAL]
    assert np.abs(mean_colours(s.x_test) - np.array([COLOUR[w] for _, w in VAL])).max() < 4


def test_reads_the_official_zip_and_caches_the_decoded_arrays(tmp_path, table):
    archive = write_zip(tmp_path, official_files())
    table(archive)
    check_splits(data.load("tiny-imagenet", tmp_path))
    cache = tmp_path / tiny_imagenet.CACHE
    assert cache.is_file() and not list(tmp_path.glob("*.tmp-*"))
    archive.unlink()  # the second load never opens the archive
    s = data.load("tiny-imagenet", tmp_path)
    check_splits(s)
    assert str(cache) in s.source


def test_reads_the_extracted_folder(tmp_path):
    write_folder(tmp_path, official_files())
    check_splits(data.load("tiny-imagenet", tmp_path))


def test_the_archive_md5_is_checked(tmp_path):
    archive = write_zip(tmp_path, official_files())  # the real table: a hand-made zip cannot match
    with pytest.raises(DataError, match="tiny-imagenet-200.zip is corrupt or partial: md5 .* expected "
                                        "90528d7ca1a48142e341f4ef8d21d0de"):
        data.load("tiny-imagenet", tmp_path)
    assert archive.exists()  # a user's folder: never deleted


def test_official_table_entry():
    entry = dl.remote("tiny-imagenet", "tiny-imagenet-200.zip")
    assert entry.md5 == "90528d7ca1a48142e341f4ef8d21d0de"
    assert entry.urls == ("http://cs231n.stanford.edu/tiny-imagenet-200.zip",)


def test_a_missing_archive_says_where_to_get_it(tmp_path):
    (tmp_path / "elsewhere.txt").write_text("")
    with pytest.raises(DataError, match="no tiny-imagenet data in .*tiny-imagenet-200.zip"):
        data.load("tiny-imagenet", tmp_path)


@pytest.mark.parametrize("problem, message", [
    ("annotation", "val_annotations.txt has a line .*n00000000.* that names no class"),
    ("missing", "val/images/val_3.JPEG is listed in val_annotations.txt but missing"),
    ("size", "is 32x32, Tiny-ImageNet images are 64x64"),
    ("not-jpeg", "is not a readable JPEG"),
    ("no-wnids", "has no tiny-imagenet-200/wnids.txt"),
])
def test_a_wrong_layout_is_one_clear_error(tmp_path, table, problem, message):
    files = official_files()
    if problem == "annotation":
        files["tiny-imagenet-200/val/val_annotations.txt"] += b"val_9.JPEG\tn00000000\t0\t0\t1\t1\n"
    elif problem == "missing":
        del files["tiny-imagenet-200/val/images/val_3.JPEG"]
    elif problem == "size":
        files[f"tiny-imagenet-200/train/{WNIDS[1]}/images/{WNIDS[1]}_0.JPEG"] = jpeg((1, 2, 3), size=32)
    elif problem == "not-jpeg":
        files["tiny-imagenet-200/val/images/val_0.JPEG"] = b"not an image"
    else:
        del files["tiny-imagenet-200/wnids.txt"]
    table(write_zip(tmp_path, files))
    with pytest.raises(DataError, match=message):
        data.load("tiny-imagenet", tmp_path)
    assert not (tmp_path / tiny_imagenet.CACHE).exists()


def test_an_unreadable_cache_is_named(tmp_path):
    (tmp_path / tiny_imagenet.CACHE).write_bytes(b"garbage")
    with pytest.raises(DataError, match="tiny-imagenet-200.npz .* is unreadable .* delete it"):
        data.load("tiny-imagenet", tmp_path)
