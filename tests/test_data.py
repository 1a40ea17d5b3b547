"""Tests of headstart.data: every source, every bad input, splits and the shapes generator."""

from __future__ import annotations

import io
import logging
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from headstart.data import (
    SHAPE_NAMES,
    LabeledDataset,
    Splits,
    check_image,
    from_arrays,
    load_dataset,
    load_image_folder,
    load_image_splits,
    load_manifest,
    load_npz,
    load_splits,
    make_shapes,
    open_image,
    stratified_split,
    validate_dataset,
)
from headstart.data import images as images_module
from headstart.errors import DataError


# ---------------------------------------------------------------- helpers


def write_image(path, colour=(200, 30, 30), size=(8, 8), mode="RGB", fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path, format=fmt)
    return path


def make_folder(root, counts, ext=".png"):
    """``root/<class>/<i><ext>`` with ``counts[class]`` small images each."""
    for k, (name, n) in enumerate(counts.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            write_image(root / name / f"{i}{ext}", colour=(40 * k, 10 * i % 256, 100))
    return root


def png_header_only(path, width, height):
    """A PNG that declares ``width`` x ``height`` but holds no pixel data (cheap 'huge' image)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def truncated_jpeg(path):
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="JPEG", quality=95)
    data = buf.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[: len(data) // 2])
    return path


# ---------------------------------------------------------------- images


@pytest.mark.parametrize("mode,colour", [("L", 128), ("RGBA", (10, 20, 30, 255)), ("P", 3), ("CMYK", (0, 0, 0, 0))])
def test_open_image_converts_modes_to_rgb(tmp_path, mode, colour):
    path = write_image(tmp_path / f"x.{'tif' if mode == 'CMYK' else 'png'}", colour=colour, mode=mode)
    img = open_image(path)
    assert img.mode == "RGB" and img.size == (8, 8)


def test_open_image_transparent_pixels_become_white(tmp_path):
    img = open_image(write_image(tmp_path / "a.png", colour=(0, 0, 0, 0), mode="RGBA"))
    assert img.getpixel((0, 0)) == (255, 255, 255)


def test_open_image_scales_16_bit(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16)).save(path)
    assert open_image(path).getpixel((0, 0)) == (255, 255, 255)


def test_open_image_applies_exif_orientation(tmp_path):
    img = Image.new("RGB", (20, 10), (1, 2, 3))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif)
    assert open_image(path).size == (10, 20)


def test_truncated_jpeg_is_refused(tmp_path):
    path = truncated_jpeg(tmp_path / "cut.jpg")
    with pytest.raises(DataError, match="truncated") as e:
        open_image(path)
    assert "cut.jpg" in str(e.value)
    assert "truncated" in check_image(path)


@pytest.mark.parametrize("content,reason", [(b"hello, I am text", "not an image file"), (b"", "empty file")])
def test_non_image_files_are_refused(tmp_path, content, reason):
    path = tmp_path / "fake.png"
    path.write_bytes(content)
    with pytest.raises(DataError, match=reason) as e:
        open_image(path)
    assert "fake.png" in str(e.value)
    assert reason in check_image(path)


@pytest.mark.parametrize("content,reason", [(b"hello, I am text", "not an image file"), (b"", "empty file")])
def test_in_memory_bytes_are_read_and_refused_like_files(tmp_path, content, reason):
    good = io.BytesIO()
    Image.new("L", (12, 7)).save(good, "PNG")
    assert open_image(io.BytesIO(good.getvalue())).mode == "RGB"
    with pytest.raises(DataError, match=reason) as e:
        open_image(io.BytesIO(content), name="upload.png")
    assert "upload.png" in str(e.value)
    with pytest.raises(DataError, match="truncated"):
        open_image(io.BytesIO(truncated_jpeg(tmp_path / "cut.jpg").read_bytes()))


def test_huge_declared_size_is_refused_before_decoding(tmp_path):
    path = png_header_only(tmp_path / "huge.png", 10_000, 10_000)  # 1e8 pixels: above our limit
    with pytest.raises(DataError) as e:
        open_image(path)
    msg = str(e.value)
    assert "10000x10000" in msg and "MAX_IMAGE_PIXELS" in msg and "resize" in msg
    bomb = png_header_only(tmp_path / "bomb.png", 100_000, 100_000)  # also above Pillow's own hard limit
    assert "MAX_IMAGE_PIXELS" in check_image(bomb)


def test_pixel_limit_is_configurable(tmp_path, monkeypatch):
    path = write_image(tmp_path / "a.png", size=(20, 20))
    assert "over the limit of 100 pixels" in check_image(path, max_pixels=100)
    monkeypatch.setattr(images_module, "MAX_IMAGE_PIXELS", 399)
    with pytest.raises(DataError, match="400 pixels"):
        open_image(path)
    assert open_image(path, max_pixels=400).size == (20, 20)


def test_missing_image_file(tmp_path):
    assert check_image(tmp_path / "nope.png") == "file not found"


# ---------------------------------------------------------------- folders


def test_load_image_folder_sorted_classes_and_problems(tmp_path, caplog):
    root = make_folder(tmp_path / "data", {"dog": 3, "cat": 2})
    (root / "cat" / ".hidden.png").write_bytes(b"junk")
    (root / "cat" / "notes.txt").write_text("hello")
    truncated_jpeg(root / "dog" / "bad.jpg")
    with caplog.at_level(logging.WARNING, logger="headstart.data"):
        ds = load_image_folder(root)
    assert ds.classes == ["cat", "dog"] and ds.counts() == {"cat": 2, "dog": 3}
    assert all(os.path.isfile(p) for p in ds.items)
    reasons = {os.path.basename(p.item): p.reason for p in ds.problems}
    assert set(reasons) == {"notes.txt", "bad.jpg"}
    assert "not an image extension" in reasons["notes.txt"] and "truncated" in reasons["bad.jpg"]
    assert "skipped 2 file(s)" in caplog.text
    assert ds.load(0).mode == "RGB"


def test_strict_raises_on_first_bad_file(tmp_path):
    root = make_folder(tmp_path / "data", {"a": 2, "b": 2})
    (root / "b" / "zero.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"zero\.png.*empty file.*strict"):
        load_image_folder(root, strict=True)


@pytest.mark.parametrize(
    "counts,message",
    [
        ({"a": 2, "b": 0}, "class 'b' .* no usable images; add images or remove the class folder"),
        ({"a": 3}, "1 class .*at least 2 .*add a second class"),
        ({"a": 2, "b": 1}, "class 'b' .* has 1 image; need at least 2 to train and evaluate — add images or remove"),
        ({}, "no usable images"),
    ],
)
def test_bad_folder_contents(tmp_path, counts, message):
    root = make_folder(tmp_path / "data", counts)
    root.mkdir(exist_ok=True)
    with pytest.raises(DataError, match=message):
        load_image_folder(root)


def test_class_of_only_bad_files_names_them(tmp_path):
    root = make_folder(tmp_path / "data", {"a": 2})
    (root / "b").mkdir()
    (root / "b" / "x.png").write_text("text")
    with pytest.raises(DataError, match=r"class 'b'.*skipped.*x\.png: not an image file"):
        load_image_folder(root)


def test_unreadable_roots(tmp_path):
    with pytest.raises(DataError, match="folder not found"):
        load_image_folder(tmp_path / "missing")
    f = write_image(tmp_path / "one.png")
    with pytest.raises(DataError, match="is a file, not a folder"):
        load_image_folder(f)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores permissions")
def test_permission_denied(tmp_path):
    root = make_folder(tmp_path / "data", {"a": 2, "b": 2})
    root.chmod(0)
    try:
        with pytest.raises(DataError, match="permission denied"):
            load_image_folder(root)
    finally:
        root.chmod(0o755)


def test_single_folder_is_split_stratified(tmp_path):
    root = make_folder(tmp_path / "data", {"a": 20, "b": 10})
    splits = load_image_splits(root, val=0.2, test=0.2, seed=1)
    assert splits.summary() == {"train": {"a": 12, "b": 6}, "val": {"a": 4, "b": 2}, "test": {"a": 4, "b": 2}}
    all_items = list(splits.train.items) + list(splits.val.items) + list(splits.test.items)
    assert len(set(all_items)) == 30
    again = load_image_splits(root, val=0.2, test=0.2, seed=1)
    assert list(again.val.items) == list(splits.val.items)


def test_split_folders_are_honoured(tmp_path):
    root = tmp_path / "data"
    make_folder(root / "train", {"a": 3, "b": 3, "c": 2})
    make_folder(root / "valid", {"a": 1, "b": 1})
    make_folder(root / "test", {"c": 1, "a": 1})
    splits = load_image_splits(root)
    assert splits.classes == ["a", "b", "c"]
    assert splits.val.classes == splits.test.classes == ["a", "b", "c"]
    assert splits.summary()["val"] == {"a": 1, "b": 1, "c": 0}
    assert splits.summary()["test"] == {"a": 1, "b": 0, "c": 1}
    assert all("/train/" in p for p in splits.train.items)
    with pytest.raises(DataError, match="holds split folders .*load_image_splits"):
        load_image_folder(root)


def test_missing_test_folder_is_carved_from_train(tmp_path):
    root = tmp_path / "data"
    make_folder(root / "train", {"a": 10, "b": 10})
    make_folder(root / "val", {"a": 2, "b": 2})
    splits = load_image_splits(root, test=0.2)
    assert splits.summary()["test"] == {"a": 2, "b": 2}
    assert splits.summary()["train"] == {"a": 8, "b": 8}


def test_class_missing_from_train_is_an_error(tmp_path):
    root = tmp_path / "data"
    make_folder(root / "train", {"a": 2, "b": 2})
    make_folder(root / "val", {"a": 1, "z": 1})
    with pytest.raises(DataError, match=r"\['z'\].*no folder in .*train"):
        load_image_splits(root)


# ---------------------------------------------------------------- manifests


def test_load_manifest_relative_paths_and_missing_files(tmp_path):
    make_folder(tmp_path / "imgs", {"x": 2, "y": 2})
    rows = ["path,label", "imgs/x/0.png,cat", "imgs/x/1.png,cat", "imgs/y/0.png,dog", "imgs/y/1.png,dog",
            "imgs/gone.png,dog"]
    csv_path = tmp_path / "m.csv"
    csv_path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    ds = load_manifest(csv_path)
    assert ds.classes == ["cat", "dog"] and ds.counts() == {"cat": 2, "dog": 2}
    assert len(ds.problems) == 1 and "file not found" in ds.problems[0].reason and "line 6" in ds.problems[0].item
    with pytest.raises(DataError, match="gone.png.*file not found"):
        load_manifest(csv_path, strict=True)


def test_manifest_wrong_columns_lists_them(tmp_path):
    csv_path = tmp_path / "m.csv"
    csv_path.write_text("filename,class\na.png,x\n", encoding="utf-8")
    with pytest.raises(DataError) as e:
        load_manifest(csv_path)
    msg = str(e.value)
    assert "no 'path' column" in msg and "'filename', 'class'" in msg and "path_col='filename'" in msg


def test_manifest_not_utf8_names_the_line(tmp_path):
    csv_path = tmp_path / "m.csv"
    csv_path.write_bytes("path,label\na.png,x\ncaf\u00e9.png,y\n".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8: line 3 .*re-save it as UTF-8"):
        load_manifest(csv_path)


# ---------------------------------------------------------------- arrays


@pytest.mark.parametrize(
    "images",
    [
        np.random.default_rng(0).random((6, 5, 7)),  # float [0, 1], (N, H, W)
        np.zeros((6, 5, 7, 1), dtype=np.uint8),
        np.zeros((6, 3, 5, 7), dtype=np.float32),  # channels first
        np.full((6, 5, 7, 3), 200, dtype=np.int64),
    ],
)
def test_from_arrays_normalises_images(images):
    ds = from_arrays(images, [0, 1, 0, 1, 0, 1])
    assert ds.items.shape == (6, 5, 7, 3) and ds.items.dtype == np.uint8
    assert ds.classes == ["0", "1"] and ds.in_memory
    assert ds.load(0).size == (7, 5)


def test_from_arrays_string_labels_and_ranges():
    x = np.linspace(0, 16, 4 * 9).reshape(4, 3, 3)
    ds = from_arrays(x, ["b", "a", "b", "a"], value_range=(0, 16))
    assert ds.classes == ["a", "b"] and list(ds.labels) == [1, 0, 1, 0]
    assert ds.items.max() == 255 and ds.items.min() == 0
    with pytest.raises(DataError, match="negative values.*value_range"):
        from_arrays(x - 8, [0, 1, 0, 1])
    with pytest.raises(DataError, match="got shape"):
        from_arrays(np.zeros((4, 5, 5, 4)), [0, 1, 0, 1])
    with pytest.raises(DataError, match="class 'b' .* has 1 image"):
        from_arrays(x, ["a", "a", "a", "b"], value_range=(0, 16), min_per_class=2)
    assert from_arrays(x, [0, 0, 0, 0], classes=["?"]).classes == ["?"]  # unvalidated by default: predict inputs
    with pytest.raises(DataError, match="4 images but 3 labels"):
        from_arrays(np.zeros((4, 3, 3)), [0, 1, 0])


def test_load_npz(tmp_path):
    x = np.zeros((4, 6, 6, 3), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", x=x, y=np.array([0, 1, 0, 1]))
    np.savez(tmp_path / "b.npz", images=x, labels=np.array(["u", "v", "u", "v"]))
    assert load_npz(tmp_path / "a.npz").classes == ["0", "1"]
    assert load_npz(tmp_path / "b.npz").classes == ["u", "v"]
    np.savez(tmp_path / "c.npz", data=x)
    with pytest.raises(DataError, match=r"arrays \['data'\].*'x' and 'y'"):
        load_npz(tmp_path / "c.npz")


# ---------------------------------------------------------------- shapes


def test_shapes_are_deterministic_and_varied():
    a = make_shapes(n_per_class=20, size=32, seed=3)
    b = make_shapes(n_per_class=20, size=32, seed=3)
    c = make_shapes(n_per_class=20, size=32, seed=4)
    assert a.items.tobytes() == b.items.tobytes()
    assert a.items.tobytes() != c.items.tobytes()
    assert a.items.shape == (60, 32, 32, 3) and a.items.dtype == np.uint8
    assert a.classes == ["circle", "square", "triangle"] and a.counts() == {"circle": 20, "square": 20, "triangle": 20}
    assert len({a.items[i].tobytes() for i in range(60)}) == 60
    # each class has its own stream: the circles do not depend on which other classes are drawn
    only = make_shapes(("circle",), n_per_class=20, size=32, seed=3)
    assert only.items.tobytes() == a.items[:20].tobytes()


def test_shapes_all_six():
    # no timing assertion: speed targets live in benchmarks/, and this one failed on a loaded machine
    ds = make_shapes(SHAPE_NAMES, n_per_class=300, size=64)
    assert len(SHAPE_NAMES) == 6 and ds.items.shape == (1800, 64, 64, 3)
    with pytest.raises(DataError, match="among"):
        make_shapes(("circle", "blob"))


# ---------------------------------------------------------------- splits and checks


def toy(counts):
    labels = np.concatenate([np.full(n, k) for k, n in enumerate(counts)])
    return LabeledDataset(np.zeros((len(labels), 2, 2, 3), np.uint8), labels, [f"c{k}" for k in range(len(counts))])


def test_stratified_split_keeps_proportions():
    splits = stratified_split(toy([60, 40]), val=0.2, test=0.1, seed=0)
    assert splits.summary() == {"train": {"c0": 42, "c1": 28}, "val": {"c0": 12, "c1": 8}, "test": {"c0": 6, "c1": 4}}
    assert stratified_split(toy([60, 40]), val=0.2, test=0, seed=0).test is None


def test_small_classes_fall_back_keeping_one_in_train(caplog):
    with caplog.at_level(logging.WARNING, logger="headstart.data"):
        splits = stratified_split(toy([20, 2, 1]), val=0.15, test=0.15, seed=0)
    assert "too few items per class" in caplog.text
    assert all(n >= 1 for n in splits.train.counts().values())
    assert sum(len(s) for s in (splits.train, splits.val, splits.test)) == 23


def test_bad_fractions():
    with pytest.raises(DataError, match="below 1"):
        stratified_split(toy([5, 5]), val=0.5, test=0.5)


def test_validate_dataset_min_per_class():
    with pytest.raises(DataError, match="class 'c1' .* has 2 images; need at least 3"):
        validate_dataset(toy([5, 2]), min_per_class=3)


# ---------------------------------------------------------------- load_splits


def test_load_splits_dispatches_every_source(tmp_path):
    root = make_folder(tmp_path / "folder", {"a": 10, "b": 10})
    assert load_splits(root).classes == ["a", "b"]
    csv_path = tmp_path / "m.csv"
    csv_path.write_text("path,label\n" + "".join(f"folder/{c}/{i}.png,{c}\n" for c in "ab" for i in range(10)))
    assert len(load_splits(csv_path, val=0.1, test=0.1).train) == 16
    np.savez(tmp_path / "d.npz", x=np.zeros((20, 4, 4), np.uint8), y=np.arange(20) % 2)
    assert load_splits(tmp_path / "d.npz").classes == ["0", "1"]
    shapes = load_splits("shapes:star,pentagon,hexagon", n_per_class=10)
    assert shapes.classes == ["star", "pentagon", "hexagon"] and len(shapes.train) == 21
    assert load_splits("shapes", n_per_class=10).classes == ["circle", "square", "triangle"]
    ds = toy([10, 10])
    assert len(load_splits(ds).train) == 14
    given = Splits(train=ds)
    assert load_splits(given) is given
    assert load_dataset(ds) is ds


def test_load_splits_unknown_source(tmp_path):
    with pytest.raises(DataError, match="not found; accepted: a folder .*.csv.*shapes"):
        load_splits(tmp_path / "nothing_here")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(DataError, match="is a .json file; accepted"):
        load_splits(tmp_path / "x.json")
    with pytest.raises(DataError, match="1 class"):
        load_splits(from_arrays(np.zeros((4, 2, 2)), [0, 0, 0, 0]))
    with pytest.raises(DataError, match="cannot load data from a int"):
        load_splits(42)
