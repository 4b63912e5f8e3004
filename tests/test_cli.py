"The `msflow` command end to end on a tiny generated dataset: train -> test -> predict, and its errors."
import csv, json, os, subprocess, sys
from pathlib import Path

import pytest

from msflow.demo_data import make_demo_dataset

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
TINY = ["--weights", "random", "--input-size", "64", "--epochs", "2", "--batch-size", "4", "--blocks", "1,1,1",
        "--val-fraction", "0.25", "--device", "cpu"]


def msflow(*args, check=True):
    r = subprocess.run([sys.executable, "-m", "msflow.cli", *map(str, args)], capture_output=True, text=True, env=ENV)
    if check and r.returncode != 0: raise AssertionError(f"exit {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp("data"), categories=["grass"], n_train=12, n_test=6, size=64, seed=1)


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "grass"
    r = msflow("train", "--data-root", data, "--category", "grass", "--out", out, "--quiet", *TINY)
    assert "Image AUROC" in r.stdout
    return out


def test_train_writes_a_complete_run(run):
    for f in ("config.json", "model.pt", "metrics.json", "results.md", "history.json", "environment.json", "roc.png", "pro.png"):
        assert (run / f).is_file(), f
    m = json.loads((run / "metrics.json").read_text())
    assert set(m) >= {"image_auroc", "pixel_auroc", "aupro", "aupro_paper", "train_seconds", "test_images_per_second"}
    assert 0 <= m["image_auroc"] <= 1 and m["train_seconds"] > 0
    assert any((run / "heatmaps").glob("*.png"))
    assert json.loads((run / "config.json").read_text())["epochs"] == 2
    assert json.loads((run / "environment.json").read_text())["seed"] == 9826


def test_test_reproduces_the_training_metrics(run, data):
    r = msflow("test", "--run", run, "--data-root", data, "--category", "grass", "--device", "cpu", "--quiet")
    train_table = (run / "results.md").read_text()
    auroc_line = next(l for l in train_table.splitlines() if l.startswith("| Image AUROC"))
    assert auroc_line in r.stdout


def test_predict_writes_scores_and_overlays(run, data, tmp_path):
    test_dir = data / "grass" / "test"
    r = msflow("predict", "--run", run, test_dir, "--out", tmp_path / "pred", "--device", "cpu", "--quiet")
    rows = list(csv.DictReader(open(tmp_path / "pred" / "scores.csv")))
    n = len(list(test_dir.rglob("*.png")))
    assert len(rows) == n and f"{n} images scored" in r.stdout
    assert {row["anomalous"] for row in rows} <= {"yes", "no"}
    assert len(list((tmp_path / "pred" / "heatmaps").glob("*.png"))) == n


def test_existing_run_is_not_overwritten(run, data):
    before = (run / "model.pt").stat().st_mtime_ns
    r = msflow("train", "--data-root", data, "--category", "grass", "--out", run, "--quiet", *TINY, check=False)
    assert r.returncode == 2 and "already exists" in r.stderr and "Traceback" not in r.stderr
    assert (run / "model.pt").stat().st_mtime_ns == before


@pytest.mark.parametrize("args, expected", [
    (["describe", "--data-root", "{tmp}/nope", "--category", "x"], "nope"),
    (["train", "--data-root", "{data}", "--category", "nosuch", "--out", "{tmp}/r"], "nosuch"),
    (["predict", "--run", "{tmp}/norun", "{data}", "--out", "{tmp}/p"], "norun"),
])
def test_user_errors_are_one_line_and_exit_2(args, expected, data, tmp_path):
    args = [a.format(tmp=tmp_path, data=data) for a in args]
    r = msflow(*args, check=False)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("msflow: error:") and expected in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "r").exists()


def test_debug_shows_the_traceback(tmp_path):
    r = msflow("describe", "--data-root", tmp_path / "nope", "--category", "x", "--debug", check=False)
    assert r.returncode == 2 and "Traceback" in r.stderr


def test_help_is_complete():
    r = msflow("train", "--help")
    for opt in ("--data-root", "--category", "--out", "--preset", "--backbone", "--weights", "--input-size", "--epochs",
                "--batch-size", "--device", "--seed"):
        assert opt in r.stdout


def test_test_accepts_scoring_options(run, data):
    "bf16 and another batch size at scoring time: the same table, metrics close to the float32 ones."
    r32 = msflow("test", "--run", run, "--data-root", data, "--category", "grass", "--device", "cpu", "--quiet")
    r16 = msflow("test", "--run", run, "--data-root", data, "--category", "grass", "--device", "cpu", "--quiet",
                 "--amp", "bf16", "--batch-size", "3")
    pix = lambda out: float(next(l for l in out.splitlines() if l.startswith("| Pixel AUROC")).split("|")[2])
    assert abs(pix(r32.stdout) - pix(r16.stdout)) < 2.0, (r32.stdout, r16.stdout)
    r = msflow("test", "--run", run, "--data-root", data, "--category", "grass", "--device", "cpu", "--amp", "fp16", check=False)
    assert r.returncode == 2 and "needs a CUDA GPU" in r.stderr
    for cmd in ("test", "predict"):
        h = msflow(cmd, "--help").stdout
        assert all(o in h for o in ("--amp", "--batch-size", "--compile", "--device"))


def test_predict_scores_are_the_test_scores(run, data, tmp_path):
    "The score `msflow predict` writes for a test image is the one `msflow test` ranks: same AUROC, same scores per image."
    from msflow.data import MVTecDataset
    from msflow.engine import load
    from msflow.metrics import image_auroc
    msflow("test", "--run", run, "--data-root", data, "--category", "grass", "--out", tmp_path / "t", "--device", "cpu", "--quiet")
    m = json.loads((tmp_path / "t" / "metrics.json").read_text())
    msflow("predict", "--run", run, data / "grass" / "test", "--out", tmp_path / "p", "--device", "cpu", "--quiet", "--no-heatmaps")
    rows = list(csv.DictReader(open(tmp_path / "p" / "scores.csv")))
    labels = [0 if Path(r["path"]).parent.name == "good" else 1 for r in rows]
    assert abs(image_auroc(labels, [float(r["score"]) for r in rows]) - m["image_auroc"]) < 1e-9
    det = load(run)
    sc = det.score_data(MVTecDataset(data, "grass", "test", det.input_size), progress=False)
    by_path = {str(Path(r["path"]).resolve()): r for r in rows}
    assert len(by_path) == len(sc.paths)
    for p, s, rs in zip(sc.paths, sc.scores, sc.raw_score):  # the CLI scored with ONNX Runtime, this with PyTorch
        r = by_path[str(Path(p).resolve())]
        assert abs(float(r["score"]) - s) <= 1e-5 and abs(float(r["raw_score"]) - rs) <= 1e-4 * abs(rs) + 1e-3, (p, r, s, rs)
    assert not (tmp_path / "p" / "heatmaps").exists()


def test_predict_on_a_folder_as_it_comes_off_a_line(run, data, tmp_path):
    "A note beside the images is left out with one line; a corrupt image stops predict (exit 2) unless --skip-bad."
    line = tmp_path / "line"; line.mkdir()
    imgs = sorted((data / "grass" / "test").rglob("*.png"))[:3]
    for i, p in enumerate(imgs): (line / f"{i}.png").write_bytes(p.read_bytes())
    (line / "notes.txt").write_text("shift 2")
    r = msflow("predict", "--run", run, line, "--out", tmp_path / "a", "--device", "cpu")
    assert "left out 1 file(s) without an image extension" in r.stderr and "notes.txt" in r.stderr
    assert "3 images scored" in r.stdout
    (line / "cut.png").write_bytes(imgs[0].read_bytes()[:70])
    r = msflow("predict", "--run", run, line, "--out", tmp_path / "b", "--device", "cpu", "--quiet", check=False)
    assert r.returncode == 2 and "cut.png" in r.stderr and r.stderr.count("\n") == 1 and not (tmp_path / "b" / "scores.csv").exists()
    r = msflow("predict", "--run", run, line, "--out", tmp_path / "b", "--device", "cpu", "--quiet", "--skip-bad")
    assert "3 images scored" in r.stdout and "1 unreadable skipped" in r.stdout
    assert (tmp_path / "b" / "skipped.txt").read_text().startswith(str(line / "cut.png"))
    rows = list(csv.DictReader(open(tmp_path / "b" / "scores.csv")))
    assert [Path(r["path"]).name for r in rows] == ["0.png", "1.png", "2.png"]
    assert all(float(r["raw_score"]) > 0 for r in rows)  # the graded score: nats, positive


def test_train_several_categories_writes_a_summary(tmp_path):
    "`--category A B` trains each into OUT/A, OUT/B and summarises them; a category that fails is reported and the exit status is 1."
    root = make_demo_dataset(tmp_path / "d", categories=["grass", "brick"], n_train=8, n_test=4, size=64, seed=2)
    (root / "gravel" / "train" / "good").mkdir(parents=True)  # a category with no training image
    r = msflow("train", "--data-root", root, "--category", "grass", "brick", "gravel", "--out", tmp_path / "runs", "--quiet",
               *TINY, "--epochs", "1", check=False)
    assert r.returncode == 1, r.stderr
    s = json.loads((tmp_path / "runs" / "summary.json").read_text())
    assert sorted(s["categories"]) == ["brick", "grass"] and list(s["failed"]) == ["gravel"]
    for c in ("brick", "grass"):
        m = json.loads((tmp_path / "runs" / c / "metrics.json").read_text())
        assert s["categories"][c]["image_auroc"] == m["image_auroc"]
    assert abs(s["mean"]["image_auroc"] - (s["categories"]["brick"]["image_auroc"] + s["categories"]["grass"]["image_auroc"]) / 2) < 1e-12
    assert (tmp_path / "runs" / "summary.md").is_file() and (tmp_path / "runs" / "summary.png").is_file()
    assert "gravel" in r.stderr


def test_accurate_preset_keeps_the_training_images_shape(tmp_path):
    root = make_demo_dataset(tmp_path / "data", categories=["grass"], n_train=8, n_test=6, size=128, height=48, seed=1)
    out = tmp_path / "wide"
    msflow("train", "--data-root", root, "--category", "grass", "--out", out, "--quiet", "--preset", "accurate", *TINY)
    cfg = json.loads((out / "config.json").read_text())
    # strips of 48 x 128 (h/w 0.375) at a budget of 64 x 64 pixels: sqrt(4096 * 0.375) = 39 -> 64 (two strides at least),
    # sqrt(4096 / 0.375) = 105 -> 96
    assert (cfg["aspect"], cfg["input_size"]) == ("keep", [64, 96])
    auroc_line = next(l for l in (out / "results.md").read_text().splitlines() if l.startswith("| Image AUROC"))
    t = msflow("test", "--run", out, "--data-root", root, "--category", "grass", "--device", "cpu", "--quiet")  # ONNX Runtime on the CPU
    assert auroc_line in t.stdout
    assert (out / "model.onnx").is_file()
