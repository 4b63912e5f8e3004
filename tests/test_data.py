"Bad inputs and edge cases of msflow.data, on small folder trees in temporary folders."
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from msflow.core import MSFlowError
from msflow.download import data_home, find_category
from msflow.data import (DataError, ImageFolder, MVTecDataset, check_images, collate, describe_dataset,
                         list_categories, read_image, read_mask, scan_category)

MTD_ROOT = find_category("magnetic_tile") or data_home()  # under $MSFLOW_DATA (developers: ../shared/data), else ~/msflow-data


def _save(path: Path, arr, mode=None, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(arr), mode).save(path, **kw) if mode else Image.fromarray(np.asarray(arr)).save(path, **kw)
    return path


def make_tree(root: Path, category="cat", n_train=6, size=(20, 30)):
    "A small valid category: train/good, test/good, test/dent with masks."
    h, w = size
    c = root / category
    for i in range(n_train): _save(c / f"train/good/{i:03d}.png", np.full((h, w), 100 + i, np.uint8))
    for i in range(2): _save(c / f"test/good/{i:03d}.png", np.full((h, w), 110, np.uint8))
    for i in range(2):
        _save(c / f"test/dent/{i:03d}.png", np.full((h, w, 3), 50, np.uint8))
        m = np.zeros((h, w), np.uint8); m[2:6, 3:9] = 255
        _save(c / f"ground_truth/dent/{i:03d}_mask.png", m)
    return root


@pytest.fixture
def tree(tmp_path):
    return make_tree(tmp_path / "data")


# ----------------------------------------------------------------------------- layout
def test_valid_tree(tree):
    assert list_categories(tree) == ["cat"]
    ds = MVTecDataset(tree, "cat", "test", input_size=16)
    assert len(ds) == 4 and ds.defects == ["dent", "dent", "good", "good"]
    item = ds[0]
    assert set(item) == {"image", "mask", "label", "defect", "path"}
    assert item["image"].shape == (3, 16, 16) and item["mask"].shape == (1, 16, 16)
    assert item["label"] == 1 and item["mask"].sum() > 0 and ds[3]["mask"].sum() == 0
    assert ds.validate() is ds
    assert "dent" in ds.summary() and "train  good" in describe_dataset(tree, "cat")


def test_data_error_is_msflow_error():
    assert issubclass(DataError, MSFlowError)


def test_missing_root(tmp_path):
    with pytest.raises(DataError, match="does not exist") as e: MVTecDataset(tmp_path / "nope", "cat")
    assert str(tmp_path / "nope") in str(e.value)


def test_root_is_a_file(tmp_path):
    f = tmp_path / "file"; f.write_text("x")
    with pytest.raises(DataError, match="is not a folder"): MVTecDataset(f, "cat")


def test_unknown_category_lists_available(tree):
    make_tree(tree, "other")
    with pytest.raises(DataError) as e: MVTecDataset(tree, "cta")
    msg = str(e.value)
    assert "'cta'" in msg and str(tree) in msg and "available categories: cat, other" in msg


def test_root_given_as_category_hints(tree):
    with pytest.raises(DataError, match="itself looks like a category"): MVTecDataset(tree / "cat", "cat")


def test_missing_train_good(tmp_path):
    (tmp_path / "cat/train").mkdir(parents=True)
    with pytest.raises(DataError) as e: MVTecDataset(tmp_path, "cat")
    assert str(tmp_path / "cat/train/good") in str(e.value) and "is missing" in str(e.value)


def test_empty_train(tmp_path):
    (tmp_path / "cat/train/good").mkdir(parents=True)
    (tmp_path / "cat/train/good/.DS_Store").write_bytes(b"junk")
    with pytest.raises(DataError) as e: MVTecDataset(tmp_path, "cat")
    assert str(tmp_path / "cat/train/good") in str(e.value) and "contains no images" in str(e.value)


def test_empty_defect_folder(tree):
    (tree / "cat/test/scratch").mkdir()
    with pytest.raises(DataError, match="contains no images") as e: MVTecDataset(tree, "cat", "test")
    assert str(tree / "cat/test/scratch") in str(e.value)


def test_missing_test_split(tree):
    import shutil; shutil.rmtree(tree / "cat/test")
    assert len(MVTecDataset(tree, "cat", "train")) == 6  # training needs no test folder
    with pytest.raises(DataError, match="is missing") as e: MVTecDataset(tree, "cat", "test")
    assert str(tree / "cat/test") in str(e.value)
    assert "(none)" in describe_dataset(tree, "cat")


def test_loose_file_in_test(tree):
    _save(tree / "cat/test/stray.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(DataError, match="outside a defect folder: stray.png"): MVTecDataset(tree, "cat", "test")


def test_non_image_file_is_an_error(tree):
    (tree / "cat/train/good/labels.csv").write_text("a,b")
    with pytest.raises(DataError) as e: MVTecDataset(tree, "cat")
    assert "labels.csv" in str(e.value) and str(tree / "cat/train/good") in str(e.value)


def test_hidden_and_system_files_ignored(tree):
    (tree / "cat/train/good/.DS_Store").write_bytes(b"\0\1")
    (tree / "cat/train/good/Thumbs.db").write_bytes(b"\0\1")
    (tree / "cat/train/good/.ipynb_checkpoints").mkdir()
    assert len(MVTecDataset(tree, "cat")) == 6


def test_subfolder_in_train_good_is_an_error(tree):
    (tree / "cat/train/good/more").mkdir()
    with pytest.raises(DataError, match="sub-folders.*more"): MVTecDataset(tree, "cat")


def test_zero_byte_image_found_when_listing(tree):
    (tree / "cat/train/good/999.png").write_bytes(b"")
    with pytest.raises(DataError, match="empty \\(0-byte\\) image files: 999.png") as e: MVTecDataset(tree, "cat")
    assert str(tree / "cat/train/good") in str(e.value)


def test_truncated_image_at_load_and_validate(tree):
    p = tree / "cat/train/good/002.png"
    _save(p, np.random.default_rng(0).integers(0, 255, (20, 30), dtype=np.uint8))
    p.write_bytes(p.read_bytes()[:60])
    ds = MVTecDataset(tree, "cat", input_size=16)  # listing is cheap: not decoded yet
    with pytest.raises(DataError, match="truncated or corrupt") as e: ds[2]
    assert str(p) in str(e.value)
    with pytest.raises(DataError, match="1 of 6 files cannot be used") as e: ds.validate()
    assert str(p) in str(e.value)


def test_garbage_with_image_extension(tree):
    p = tree / "cat/train/good/003.png"; p.write_text("hello")
    with pytest.raises(DataError, match="not an image format") as e: MVTecDataset(tree, "cat", input_size=16).validate()
    assert str(p) in str(e.value)


def test_validate_reports_all_bad_files(tree):
    for n in ("001.png", "004.png"): (tree / f"cat/train/good/{n}").write_text("x")
    with pytest.raises(DataError, match="2 of 6") as e: MVTecDataset(tree, "cat").validate()
    assert "001.png" in str(e.value) and "004.png" in str(e.value)


def test_defect_without_mask(tree):
    (tree / "cat/ground_truth/dent/001_mask.png").unlink()
    with pytest.raises(DataError) as e: MVTecDataset(tree, "cat", "test")
    msg = str(e.value)
    assert "no mask" in msg and str(tree / "cat/test/dent/001.png") in msg
    assert str(tree / "cat/ground_truth/dent/001_mask.png") in msg


def test_defect_without_ground_truth_folder(tree):
    _save(tree / "cat/test/crack/000.png", np.zeros((20, 30), np.uint8))
    with pytest.raises(DataError, match="no mask") as e: MVTecDataset(tree, "cat", "test")
    assert str(tree / "cat/ground_truth/crack/000_mask.png") in str(e.value)


def test_mask_size_mismatch(tree):
    m = tree / "cat/ground_truth/dent/000_mask.png"
    _save(m, np.zeros((21, 30), np.uint8))
    ds = MVTecDataset(tree, "cat", "test", input_size=16)
    with pytest.raises(DataError) as e: ds[0]
    msg = str(e.value)
    assert str(m) in msg and str(tree / "cat/test/dent/000.png") in msg and "30x21" in msg and "30x20" in msg
    with pytest.raises(DataError, match="30x21"): ds.validate()


def test_mask_names_and_formats(tmp_path):
    root = make_tree(tmp_path)
    gt = root / "cat/ground_truth/dent"
    (gt / "000_mask.png").rename(gt / "000.png")                       # VisA naming
    m = np.zeros((20, 30), np.uint8); m[0, 0] = 1
    (gt / "001_mask.png").unlink(); _save(gt / "001_mask.tif", m)      # other format
    ds = MVTecDataset(root, "cat", "test", input_size=(20, 30))
    assert [s.mask_path.name for s in ds.samples[:2]] == ["000.png", "001_mask.tif"]
    assert ds[1]["mask"].sum() == 1


def test_masks_binarised(tree):
    m = np.zeros((20, 30), np.uint8); m[0, :4] = [1, 37, 128, 255]
    _save(tree / "cat/ground_truth/dent/000_mask.png", m)
    mask = MVTecDataset(tree, "cat", "test", input_size=(20, 30))[0]["mask"]
    assert set(mask.unique().tolist()) == {0.0, 1.0} and mask.sum() == 4
    small = MVTecDataset(tree, "cat", "test", input_size=(7, 9))[1]["mask"]  # nearest resize stays binary
    assert set(small.unique().tolist()) == {0.0, 1.0}


def test_mask_palette_and_rgb(tmp_path):
    p = np.zeros((3, 3), np.uint8); p[1, 1] = 1
    im = Image.fromarray(p, "P"); im.putpalette([0, 0, 0, 255, 255, 255]); im.save(tmp_path / "p.png")
    assert read_mask(tmp_path / "p.png").sum() == 1
    rgb = np.zeros((3, 3, 3), np.uint8); rgb[0, 0, 2] = 255
    _save(tmp_path / "rgb.png", rgb)
    assert read_mask(tmp_path / "rgb.png").tolist()[0][0] is True and read_mask(tmp_path / "rgb.png").sum() == 1


# ----------------------------------------------------------------------------- image modes
def test_image_modes(tmp_path):
    g16 = np.array([[0, 256, 65535]], np.uint16)
    _save(tmp_path / "g16.png", g16)
    _save(tmp_path / "g16.tif", g16)
    for f in ("g16.png", "g16.tif"):
        a = np.asarray(read_image(tmp_path / f))
        assert a.shape == (1, 3, 3) and a[0, :, 0].tolist() == [0, 1, 255], f
    Image.fromarray(np.array([[0, 65535]], np.int32), "I").save(tmp_path / "i.ppm")  # 16-bit PPM opens as mode I
    assert np.asarray(read_image(tmp_path / "i.ppm"))[0, :, 1].tolist() == [0, 255]
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32), "F").save(tmp_path / "f.tif")
    assert np.asarray(read_image(tmp_path / "f.tif"))[0, :, 2].tolist() == [0, 128, 255]
    Image.fromarray(np.array([[0.0, 2.0]], np.float32), "F").save(tmp_path / "f2.tif")
    with pytest.raises(DataError, match="f2.tif"): read_image(tmp_path / "f2.tif")
    _save(tmp_path / "rgba.png", np.array([[[10, 20, 30, 0], [40, 50, 60, 255]]], np.uint8), "RGBA")
    assert np.asarray(read_image(tmp_path / "rgba.png")).tolist() == [[[10, 20, 30], [40, 50, 60]]]
    Image.fromarray(np.array([[0, 1]], np.uint8), "L").convert("1").save(tmp_path / "bw.png")
    assert read_image(tmp_path / "bw.png").mode == "RGB"
    Image.new("CMYK", (2, 2), (0, 0, 0, 0)).save(tmp_path / "cmyk.jpg")
    assert read_image(tmp_path / "cmyk.jpg").mode == "RGB"
    Image.new("LA", (2, 2), (90, 0)).save(tmp_path / "la.png")
    assert np.asarray(read_image(tmp_path / "la.png"))[0, 0].tolist() == [90, 90, 90]


def test_jpeg_saved_as_png_and_16bit_in_dataset(tree):
    p = tree / "cat/train/good/000.png"
    Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(p, format="JPEG")
    _save(tree / "cat/train/good/001.png", np.full((20, 30), 65535, np.uint16))
    ds = MVTecDataset(tree, "cat", input_size=(20, 30))
    ds.validate()
    assert abs(ds[0]["image"].mean().item() - 200 / 255) < 0.02
    assert ds[1]["image"].min().item() == 1.0  # 16-bit white stays white


def test_exif_orientation_and_sizes(tmp_path):
    ex = Image.Exif(); ex[0x0112] = 8
    Image.new("RGB", (30, 10)).save(tmp_path / "r.jpg", exif=ex)
    assert read_image(tmp_path / "r.jpg").size == (10, 30)
    f = ImageFolder(tmp_path, input_size=(8, 12))
    assert f[0]["orig_size"] == (30, 10) and f[0]["image"].shape == (3, 8, 12)


# ----------------------------------------------------------------------------- splits
def test_val_split(tmp_path):
    root = make_tree(tmp_path, n_train=20)
    full = MVTecDataset(root, "cat", "train").paths
    tr = MVTecDataset(root, "cat", "train", val_fraction=0.25, seed=3)
    va = MVTecDataset(root, "cat", "val", val_fraction=0.25, seed=3)
    assert (len(tr), len(va)) == (15, 5)
    assert not set(tr.paths) & set(va.paths) and sorted(tr.paths + va.paths) == full
    assert tr.paths == sorted(tr.paths) and va.paths == sorted(va.paths)
    assert MVTecDataset(root, "cat", "val", val_fraction=0.25, seed=3).paths == va.paths
    assert MVTecDataset(root, "cat", "val", val_fraction=0.25, seed=4).paths != va.paths
    assert MVTecDataset(root, "cat", "test", val_fraction=0.25, seed=3).paths == MVTecDataset(root, "cat", "test").paths


def test_val_split_errors(tree):
    with pytest.raises(DataError, match="needs val_fraction > 0"): MVTecDataset(tree, "cat", "val")
    with pytest.raises(DataError, match=r"val_fraction must be in \[0, 1\)"): MVTecDataset(tree, "cat", "train", val_fraction=1.0)
    with pytest.raises(DataError, match="split must be one of"): MVTecDataset(tree, "cat", "valid")


# ----------------------------------------------------------------------------- predict inputs and batches
def test_image_folder(tree):
    f = ImageFolder([tree / "cat/test/dent", tree / "cat/train/good/000.png"], input_size=16)
    assert [Path(p).name for p in f.paths] == ["000.png", "001.png", "000.png"]
    b = next(iter(DataLoader(f, batch_size=3, collate_fn=collate)))
    assert b["image"].shape == (3, 3, 16, 16) and b["orig_size"] == [(20, 30)] * 3 and len(b["path"]) == 3
    assert len(ImageFolder(tree / "cat", recursive=True)) == 6 + 4 + 2  # masks are images too
    assert f.validate() is f


def test_image_folder_errors(tree, tmp_path):
    with pytest.raises(DataError, match="does not exist") as e: ImageFolder(tmp_path / "missing.png")
    assert str(tmp_path / "missing.png") in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found"): ImageFolder(tmp_path / "empty")
    (tree / "cat/test/dent/notes.txt").write_text("x")  # scoring leaves a non-image file out and lists it (training refuses it)
    f = ImageFolder(tree / "cat/test/dent")
    assert [p.name for p in f.left_out] == ["notes.txt"] and all(p.suffix == ".png" for p in f.paths)
    for p in list((tree / "cat/test/dent").glob("*.png")): p.unlink()
    with pytest.raises(DataError, match="1 files without an image extension left out"): ImageFolder(tree / "cat/test/dent")


def test_check_images(tree, tmp_path):
    paths = MVTecDataset(tree, "cat").paths
    assert check_images(paths) == [(20, 30)] * 6
    with pytest.raises(DataError, match="missing.png"): check_images(paths + [tmp_path / "missing.png"])


def test_default_collate(tree):
    b = next(iter(DataLoader(MVTecDataset(tree, "cat", "test", input_size=16), batch_size=4)))
    assert b["image"].shape == (4, 3, 16, 16) and b["mask"].shape == (4, 1, 16, 16)
    assert b["label"].tolist() == [1, 1, 0, 0] and b["defect"] == ["dent", "dent", "good", "good"]
    assert isinstance(b["path"], list) and isinstance(b["path"][0], str)


def test_worker_processes(tree):
    dl = DataLoader(MVTecDataset(tree, "cat", "test", input_size=16), batch_size=2, num_workers=2, collate_fn=collate)
    assert sum(len(b["path"]) for b in dl) == 4


# ----------------------------------------------------------------------------- real data (listing only)
@pytest.mark.skipif(not (MTD_ROOT / "magnetic_tile").is_dir(), reason="Magnetic Tile Defects not installed")
def test_magnetic_tile_listing():
    assert len(MVTecDataset(MTD_ROOT, "magnetic_tile", "train")) == 761
    te = MVTecDataset(MTD_ROOT, "magnetic_tile", "test")
    assert len(te) == 583 and int(te.labels.sum()) == 392
    assert sorted(set(te.defects)) == ["blowhole", "break", "crack", "fray", "good", "uneven"]
    assert "583" in describe_dataset(MTD_ROOT, "magnetic_tile")


# ----------------------------------------------------------------------------- demo data
def test_demo_dataset_deterministic_and_exact(tmp_path):
    import hashlib
    from msflow.demo_data import DEMO_CATEGORIES, demo_samples, make_demo_dataset

    def digest(d):
        return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()}
    kw = dict(categories=["grass"], n_train=3, n_test=8, size=48, seed=7)
    a, b = make_demo_dataset(tmp_path / "a", **kw), make_demo_dataset(tmp_path / "b", **kw)
    assert digest(a) == digest(b) and len(digest(a)) > 10
    te = MVTecDataset(a, "grass", "test", input_size=48).validate()
    assert len(te) == 8 and int(te.labels.sum()) == 6
    for rel, img, mask, clean in demo_samples("grass", 3, 8, 48, 7):
        saved = np.asarray(Image.open(a / "grass" / rel))
        assert np.array_equal(saved, img)
        changed = np.any(saved != clean, axis=-1)
        if mask is None: assert not changed.any()
        else:
            m = read_mask(a / "grass/ground_truth" / Path(rel).parent.name / (Path(rel).stem + "_mask.png"))
            assert m.any() and np.array_equal(m, changed)
    assert set(DEMO_CATEGORIES) == {"brick", "grass", "gravel"}


# ----------------------------------------------------------------------------- msflow.images and msflow.data
OLD_DATA_NAMES = ['IMAGE_EXTENSIONS', 'DataError', 'DataWarning', 'BadImagesError', 'is_image_file', 'read_image', 'read_mask',
                  'resize_image', 'image_to_tensor', 'mask_to_tensor', 'list_images', 'bad_files_message', 'find_bad_images',
                  'check_images', 'Sample', 'list_categories', 'scan_category', 'split_train_val', 'MVTecDataset',
                  'image_size', 'keep_aspect_size', 'collate', 'describe_dataset', 'ImageFolder']


def test_data_still_exports_the_image_file_names():
    "The image-file half lives in msflow.images; every name msflow.data exported is still there, as the same object."
    import msflow.data as data, msflow.images as images
    assert set(OLD_DATA_NAMES) <= set(data.__all__) and all(hasattr(data, n) for n in data.__all__)
    for n in images.__all__: assert getattr(data, n) is getattr(images, n), n
    assert issubclass(data.BadImagesError, data.DataError) and issubclass(data.DataError, MSFlowError)


def test_images_module_leaves_torch_out():
    "Reading and checking image files needs no torch (so `msflow download` can use it and still start fast)."
    import subprocess, sys
    r = subprocess.run([sys.executable, "-c", "import sys, msflow.images; print('torch' in sys.modules)"],
                       capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stdout + r.stderr[-2000:]
