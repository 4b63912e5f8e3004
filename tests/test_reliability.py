"""Reliability of `msflow` as a command: bad input ends in one clear line (exit 2, no run folder), messy but
unambiguous input works, unreadable training images can be skipped, an interrupted or diverged training
resumes to exactly the uninterrupted result, and saved models are checked when loaded."""
import contextlib, csv, io, json, os, shutil, signal, subprocess, sys, time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from msflow.cli import main
from msflow.demo_data import make_demo_dataset
from msflow.engine import fit, load
from msflow.runs import partial_folder
from msflow.train import load_checkpoint

torch.set_num_threads(1)
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
TINY = ["--weights", "random", "--input-size", "64", "--epochs", "2", "--batch-size", "4", "--blocks", "1,1,1",
        "--val-fraction", "0.25", "--device", "cpu"]


def cli(*args):
    "Run `msflow ARGS` in this process: (exit status, stdout, stderr)."
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args])
    return rc, out.getvalue(), err.getvalue()


def train(root, out, *extra, category="grass"):
    return cli("train", "--data-root", root, "--category", category, "--out", out, "--quiet", *TINY, *extra)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp("demo"), categories=["grass"], n_train=12, n_test=6, size=64, seed=1)


@pytest.fixture
def data(demo, tmp_path):
    "A fresh copy of the demo data to damage."
    shutil.copytree(demo, tmp_path / "data")
    return tmp_path / "data"


# ----------------------------------------------------------------------------- bad data: one line, exit 2, nothing written
def _cut(p: Path): p.write_bytes(p.read_bytes()[:60])
def _mask(shape):
    m = np.zeros(shape, np.uint8); m[10:20, 10:20] = 255
    return m

BAD = {  # name: (damage(data), words the message must contain, extra options)
    "truncated training image": (lambda d: _cut(d / "grass/train/good/003.png"), ["003.png", "truncated or corrupt", "--skip-bad"], []),
    "text saved as .png": (lambda d: (d / "grass/train/good/004.png").write_text("hello"), ["004.png", "not an image format", "--skip-bad"], []),
    "zero-byte training image": (lambda d: (d / "grass/train/good/005.png").write_bytes(b""), ["005.png", "empty (0 bytes)", "--skip-bad"], []),
    "non-image among the images": (lambda d: (d / "grass/train/good/labels.csv").write_text("a,b"), ["labels.csv", "not an image", "remove"], []),
    "zero-byte test image": (lambda d: (d / "grass/test/good/001.png").write_bytes(b""), ["test/good", "001.png", "empty", "remove"], []),
    "truncated test image": (lambda d: _cut(d / "grass/test/hole/000_small.png"), ["000_small.png", "truncated", "remove"], []),
    "mask missing": (lambda d: (d / "grass/ground_truth/stain/000_small_mask.png").unlink(), ["no mask", "test/stain/000_small.png", "000_small_mask.png"], []),
    "mask of another size": (lambda d: Image.fromarray(_mask((32, 64))).save(d / "grass/ground_truth/hole/000_small_mask.png"),
                             ["000_small_mask.png", "64x32", "must have its image's size"], []),
    "truncated mask": (lambda d: _cut(d / "grass/ground_truth/patch/000_small_mask.png"), ["000_small_mask.png", "mask"], []),
    "empty training folder": (lambda d: [p.unlink() for p in (d / "grass/train/good").iterdir()], ["train/good", "contains no images"], []),
    "no training folder": (lambda d: shutil.rmtree(d / "grass/train"), ["train/good", "is missing"], []),
    "empty defect folder": (lambda d: (d / "grass/test/dent").mkdir(), ["test/dent", "contains no images"], []),
    "file outside a defect folder": (lambda d: shutil.copy(d / "grass/test/good/000.png", d / "grass/test/x.png"), ["x.png", "test/good/"], []),
    "no such category": (lambda d: None, ["'gras'", "available categories: grass"], ["--category", "gras"]),
    "input size too small": (lambda d: None, ["input_size", "too small", "32"], ["--input-size", "16"]),
    "too few images for the validation split": (lambda d: None, ["too few", "val_fraction"], ["--val-fraction", "0.99"]),
    "fp16 on the CPU": (lambda d: None, ["fp16", "CUDA", "bf16"], ["--amp", "fp16"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_data_is_one_line_exit_2_and_no_run_folder(case, data, tmp_path):
    damage, words, extra = BAD[case]
    damage(data)
    out = tmp_path / "runs" / "r"
    rc, _, err = train(data, out, *extra)
    assert rc == 2, err
    assert err.startswith("msflow: error:") and err.count("\n") == 1 and "Traceback" not in err, err
    for w in words: assert w in err, (w, err)
    assert not out.exists() and not partial_folder(out).exists()


def test_messy_but_unambiguous_input_works(demo, tmp_path):
    "Spaces and non-ASCII in every path, a JPEG named .png, 16-bit, alpha, tiny images, a 0/128/255 mask; predict on any size and format."
    root = tmp_path / "my data ü"
    shutil.copytree(demo / "grass", root / "wiesé grün")
    cat = root / "wiesé grün"
    g = cat / "train/good"
    rgb = lambda p: np.asarray(Image.open(p).convert("RGB"))
    Image.fromarray(rgb(g / "000.png")).save(g / "000.png", format="JPEG")                 # a JPEG named .png
    Image.fromarray((rgb(g / "001.png")[..., 0].astype(np.uint16) * 257)).save(g / "001.png")  # 16-bit grey
    a = rgb(g / "002.png"); Image.fromarray(np.dstack([a, np.full(a.shape[:2], 128, np.uint8)])).save(g / "002.png")  # alpha
    Image.fromarray(rgb(g / "003.png")[:8, :8]).save(g / "003.png")                          # 8x8: resized up
    (g / "004.png").rename(g / "bild ä 4.png")
    m = np.asarray(Image.open(cat / "ground_truth/hole/000_small_mask.png").convert("L"))
    Image.fromarray(np.where(m > 0, np.where(np.arange(m.shape[1]) % 2, 128, 255), 0).astype(np.uint8)).save(
        cat / "ground_truth/hole/000_small_mask.png")                                         # not binary: 0/128/255
    out = tmp_path / "runs ø" / "résultat 1"
    rc, stdout, err = train(root, out, "--resume", category="wiesé grün")  # --resume with nothing to resume starts the run
    assert rc == 0, err
    assert (out / "model.pt").is_file() and "Image AUROC" in stdout
    assert json.loads((out / "metrics.json").read_text())["pixel_auroc"] is not None

    imgs = tmp_path / "to score é"; imgs.mkdir()
    src = rgb(cat / "test/good/000.png")
    Image.fromarray(src[..., 0]).resize((90, 50)).save(imgs / "grey wide.jpg")
    Image.fromarray(src[..., 1].astype(np.uint16) * 257).resize((40, 70)).save(imgs / "sixteen.tif")
    Image.fromarray(np.dstack([src, np.full(src.shape[:2], 200, np.uint8)])).save(imgs / "alpha.png")
    Image.fromarray(src[:8, :8]).save(imgs / "tiny ü.bmp")
    rc, stdout, err = cli("predict", "--run", out, imgs, "--out", tmp_path / "preds ü", "--device", "cpu", "--quiet")
    assert rc == 0, err
    rows = list(csv.DictReader(open(tmp_path / "preds ü" / "scores.csv", encoding="utf-8")))
    assert len(rows) == 4 and "4 images scored" in stdout
    sizes = {Path(r["path"]).stem: Image.open(r["path"]).size for r in rows}
    for stem, size in sizes.items():
        assert Image.open(tmp_path / "preds ü" / "heatmaps" / f"{stem}.png").size == size  # overlay at the image's own size


def test_skip_bad_leaves_unreadable_training_images_out(data, tmp_path):
    g = data / "grass/train/good"
    _cut(g / "003.png"); (g / "007.png").write_bytes(b""); (g / "notes.txt").write_text("x")
    out = tmp_path / "run"
    rc, _, err = train(data, out, "--skip-bad")
    assert rc == 0, err
    warn = [l for l in err.splitlines() if l.startswith("msflow: warning:")]
    assert len(warn) == 1 and "left out 3 unreadable" in warn[0] and "003.png" in warn[0] and "007.png" in warn[0]
    assert "skipped.txt" in warn[0]
    listed = [l.split("\t")[0] for l in (out / "skipped.txt").read_text().splitlines()]
    assert listed == [str(g / "003.png"), str(g / "007.png"), str(g / "notes.txt")]
    det = load(out)
    assert det.info["n_train"] + det.info["n_val"] == 10 and len(det.info["skipped"]) == 3


# ----------------------------------------------------------------------------- divergence and resume through the command
def test_diverged_training_keeps_last_checkpoint_and_resumes(demo, tmp_path, monkeypatch):
    import msflow.engine as E
    real = E.train_flows
    def poison_after_pass_1(*a, **k):  # the weights turn NaN right after pass 1 is saved: pass 2 meets a NaN loss
        def cb(passes_done, hist, model):
            if passes_done == 1:
                with torch.no_grad():
                    for p in model.parallel_flows.parameters(): p.fill_(float("nan"))
        return real(*a, **{**k, "callback": cb})
    monkeypatch.setattr(E, "train_flows", poison_after_pass_1)
    out = tmp_path / "run"
    rc, _, err = train(demo, out, "--epochs", "3")
    monkeypatch.undo()
    assert rc == 2 and err.count("\n") == 1, err
    assert "loss became nan at pass 2 of 3" in err and "after pass 1) is kept" in err and "--resume" in err and "--lr" in err
    assert not out.exists() and load_checkpoint(partial_folder(out) / "checkpoint.pt")["passes_done"] == 1
    rc, _, err = cli("predict", "--run", out, demo, "--out", tmp_path / "p")
    assert rc == 2 and "--resume" in err and not (tmp_path / "p").exists()
    rc, _, err = train(demo, out, "--epochs", "3")  # forgot --resume
    assert rc == 2 and "1 of 3 passes done" in err and "add --resume" in err
    rc, _, err = train(demo, out, "--epochs", "4", "--resume")
    assert rc == 2 and "epochs=3" in err and "epochs=4" in err
    rc, _, err = train(demo, out, "--epochs", "3", "--lr", "5e-5", "--resume")  # a lower learning rate may be given
    assert rc == 0, err
    h = json.loads((out / "history.json").read_text())
    assert h["resumed_at"] == [1] and len(h["loss"]) == 3 and np.isfinite(h["loss"]).all()
    assert h["lr"][:2] == pytest.approx([1e-4, 5e-5])  # pass 1 at the preset's rate, then the one given at --resume
    assert json.loads((out / "config.json").read_text())["lr"] == 5e-5
    assert not partial_folder(out).exists()


def test_ctrl_c_says_how_to_resume(demo, tmp_path, monkeypatch):
    import msflow.engine as E
    real = E.train_flows
    def interrupt_after_pass_1(*a, **k):
        def cb(passes_done, hist, model):
            if passes_done == 1: raise KeyboardInterrupt
        return real(*a, **{**k, "callback": cb})
    monkeypatch.setattr(E, "train_flows", interrupt_after_pass_1)
    rc, _, err = train(demo, tmp_path / "run")
    assert rc == 130 and "interrupted; the last complete pass is saved" in err and "--resume" in err
    assert not (tmp_path / "run").exists() and (partial_folder(tmp_path / "run") / "checkpoint.pt").exists()


def test_killed_training_resumes_to_the_uninterrupted_result(demo, tmp_path):
    "Kill -9 in the middle of training, then --resume: the same weights and metrics as a run never interrupted."
    args = ["--data-root", demo, "--category", "grass", "--quiet", *TINY, "--epochs", "12"]
    ref = tmp_path / "ref"
    assert cli("train", "--out", ref, *args)[0] == 0
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "msflow.cli", "train", "--out", str(out), *map(str, args)]
    p = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ck, t0 = partial_folder(out) / "checkpoint.pt", time.time()
    while not ck.exists() and p.poll() is None and time.time() - t0 < 300: time.sleep(0.01)
    p.send_signal(signal.SIGKILL); p.wait()
    assert not out.exists(), "the run finished before it could be killed"
    done = load_checkpoint(ck)["passes_done"]  # whatever moment it died at, the checkpoint loads
    assert 1 <= done < 12
    r = subprocess.run(cmd + ["--resume"], env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    a, b = (torch.load(d / "model.pt", weights_only=False) for d in (ref, out))
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k in a["state_dict"]: assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    assert (a["image_threshold"], a["pixel_threshold"]) == (b["image_threshold"], b["pixel_threshold"])
    metrics = lambda d: {k: v for k, v in json.loads((d / "metrics.json").read_text()).items() if "second" not in k}
    assert metrics(ref) == metrics(out)
    assert json.loads((out / "history.json").read_text())["resumed_at"] == [done]


# ----------------------------------------------------------------------------- saved models
def test_foreign_old_and_damaged_model_files(tmp_path):
    torch.save({"weights": 1}, tmp_path / "foreign.pt")
    torch.save({"format": "msflow-model", "format_version": 0, "msflow_version": "0.0.1"}, tmp_path / "old.pt")
    (tmp_path / "cut.pt").write_bytes(b"PK\x03\x04 broken")
    for name, words in [("foreign.pt", "not an msflow model"), ("old.pt", "format version 0"), ("cut.pt", "incomplete or damaged")]:
        rc, _, err = cli("predict", "--run", tmp_path / name, tmp_path, "--out", tmp_path / "p")
        assert rc == 2 and err.count("\n") == 1 and words in err and name in err, err
