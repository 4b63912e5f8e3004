"""Many categories and large image sets on Ray (`msflow.cluster`, `msflow.cluster_predict`): a local Ray cluster of
2 CPUs, started once for the file and shut down at the end, trains tiny demo categories; a worker killed
mid-training is retried and resumes from its checkpoint; a category with bad data fails alone; Ray and local runs
agree bitwise; `msflow predict` writes the same scores.csv with and without `--cluster ray`, on either backend, and
an interrupted Ray prediction continues."""
import contextlib, io, json, os, shutil, signal, sys
from pathlib import Path

import pytest
import torch

ray = pytest.importorskip("ray")

from msflow import cluster, cli
from msflow.cluster import TIMING_KEYS, train_categories
from msflow.cluster_predict import predict_cluster
from msflow.demo_data import make_demo_dataset
from msflow.engine import load, predict

torch.set_num_threads(1)
TINY = dict(weights="random", input_size=64, epochs=2, batch_size=4, parallel_blocks=(1, 1, 1), device="cpu")
GOOD = ["brick", "grass"]


@pytest.fixture(scope="module")
def ray_cluster():
    "One local Ray cluster (2 CPUs) for the whole file; nothing is left running."
    import ray.cloudpickle
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the kill callback travels to the workers by value
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
    assert not ray.is_initialized()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = make_demo_dataset(tmp_path_factory.mktemp("demo"), categories=["brick", "grass", "gravel"], n_train=8, n_test=6, size=64, seed=1)
    (root / "gravel/train/good/notes.txt").write_text("not an image")  # bad data: this category fails, alone
    return root


@pytest.fixture(scope="module")
def local_runs(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "runs"
    return out, train_categories(data, GOOD, out, cluster="local", cpus_per_task=1, progress=False, log=lambda *a: None, **TINY)


def kill_once(marker):
    "A fit callback: the first worker to finish pass 1 kills itself (SIGKILL), once for the whole test."
    def callback(passes_done, history, model):
        if passes_done == 1:
            try: fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError: return
            os.close(fd); os.kill(os.getpid(), signal.SIGKILL)
    return callback


@pytest.fixture(scope="module")
def ray_runs(ray_cluster, data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ray")
    out, marker, lines = tmp / "runs", tmp / "killed", []
    summary = train_categories(data, GOOD + ["gravel"], out, cluster="ray", cpus_per_task=1, log=lines.append,
                               callback=kill_once(str(marker)), **TINY)
    assert marker.exists(), "no worker was killed"
    return out, summary, lines


def state(run): return torch.load(Path(run) / "model.pt", weights_only=False)["state_dict"]
def no_timing(m): return {k: v for k, v in m.items() if k not in TIMING_KEYS}


def test_summary_matches_metrics(ray_runs):
    out, summary, _ = ray_runs
    saved = json.loads((out / "summary.json").read_text())
    assert sorted(saved["categories"]) == GOOD
    for c in GOOD: assert saved["categories"][c] == json.loads((out / c / "metrics.json").read_text())
    for k in ("image_auroc", "pixel_auroc", "aupro"):
        assert saved["mean"][k] == pytest.approx(sum(saved["categories"][c][k] for c in GOOD) / 2)
    assert "| **mean** |" in (out / "summary.md").read_text() and (out / "summary.png").stat().st_size > 0
    assert summary["categories"].keys() == saved["categories"].keys()


def test_ray_equals_local_bitwise(ray_runs, local_runs):
    (out, summary, _), (lout, lsummary) = ray_runs, local_runs
    for c in GOOD:
        a, b = state(out / c), state(lout / c)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), c
        assert no_timing(summary["categories"][c]) == no_timing(lsummary["categories"][c])


def test_killed_worker_resumes(ray_runs, local_runs):
    "The killed category was retried by Ray and resumed after pass 1; it ends as the uninterrupted run."
    out, lout = ray_runs[0], local_runs[0]
    resumed = {c: json.loads((out / c / "history.json").read_text())["resumed_at"] for c in GOOD}
    assert sorted(resumed.values()) == [[], [1]], resumed
    c = next(c for c, r in resumed.items() if r == [1])
    a, b = state(out / c), state(lout / c)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not any(p.name.endswith(".partial") for p in out.iterdir())


def test_bad_category_fails_alone(ray_runs):
    out, summary, lines = ray_runs
    assert list(summary["failed"]) == ["gravel"] and "notes.txt" in summary["failed"]["gravel"]
    assert json.loads((out / "summary.json").read_text())["failed"] == summary["failed"]
    assert "\n" not in summary["failed"]["gravel"] and "gravel" in (out / "summary.md").read_text()
    assert not (out / "gravel").exists() and any("gravel: FAILED" in l for l in lines)


def test_rerun_skips_finished(ray_runs, data):
    "The same command again: finished categories are read, not retrained (the failing one is tried again)."
    out, summary, _ = ray_runs
    before = {c: (out / c / "model.pt").stat().st_mtime_ns for c in GOOD}
    lines = []
    again = train_categories(data, GOOD + ["gravel"], out, cluster="ray", log=lines.append, **TINY)
    assert {c: (out / c / "model.pt").stat().st_mtime_ns for c in GOOD} == before
    assert again["categories"] == summary["categories"] and list(again["failed"]) == ["gravel"]
    assert sum("already trained" in l for l in lines) == 2


def msflow_predict(*args) -> str:
    "`msflow predict ARGS --quiet --no-heatmaps` in this process; its scores.csv (the folder after --out)."
    with contextlib.redirect_stdout(io.StringIO()): assert cli.main(["predict", *args, "--quiet", "--no-heatmaps"]) == 0
    return (Path(args[args.index("--out") + 1]) / "scores.csv").read_text()


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_msflow_predict_same_scores_with_and_without_ray(ray_cluster, local_runs, data, tmp_path, backend):
    "The same command with and without --cluster ray: byte-identical scores.csv (auto: ONNX Runtime on the CPU, exported once)."
    run, imgs = local_runs[0] / "grass", str(data / "grass/test")
    here = msflow_predict("--run", str(run), imgs, "--out", str(tmp_path / "local"), "--backend", backend)
    assert here.count("\n") == 7  # the header and 6 images
    if backend == "auto":
        exported = (run / "model.onnx").stat().st_mtime_ns  # exported by the local command...
        on_ray = msflow_predict("--run", str(run), imgs, "--out", str(tmp_path / "ray"), "--cluster", "ray")
        assert (run / "model.onnx").stat().st_mtime_ns == exported  # ...and reused on Ray
    else:  # the library call of `msflow predict --cluster ray`, with the backend; PyTorch's sums depend on the thread
        # count, and this process scores on 1 thread (above), as the replica (cpus_per_actor=1)
        predict_cluster(run, [imgs], tmp_path / "ray", cluster="ray", num_actors=1, backend=backend, log=lambda *a: None)
        on_ray = (tmp_path / "ray/scores.csv").read_text()
    assert on_ray == here


def test_predict_ray_equals_local(ray_cluster, local_runs, data, tmp_path):
    "An interrupted Ray prediction keeps its finished batches and continues; PyTorch replicas, with the local path's batches."
    assert cluster.predict_cluster is predict_cluster  # still importable from msflow.cluster
    run = local_runs[0] / "brick"
    imgs = tmp_path / "imgs"
    shutil.copytree(data / "brick/test", imgs)
    (imgs / "good/000.png").rename(imgs / "good/000.keep")
    (imgs / "good/000.png").write_bytes(b"broken")  # interrupts the first run: every other batch is scored and kept
    with pytest.raises(Exception, match="000.png"):
        predict_cluster(run, [imgs], tmp_path / "ray", cluster="ray", num_actors=1, backend="torch", log=lambda *a: None)
    assert (tmp_path / "ray/.partial/scores.jsonl").read_text().count("\n") == 1  # 6 images, batches of 4: one kept
    (imgs / "good/000.keep").replace(imgs / "good/000.png")
    lines = []
    rows = predict_cluster(run, [imgs], tmp_path / "ray", cluster="ray", num_actors=1, backend="torch", log=lines.append)
    assert any("1 of 2 batches already scored" in l for l in lines), lines
    assert any("replica(s) of the model on PyTorch" in l for l in lines), lines
    ref = predict(load(run), [imgs], tmp_path / "local", progress=False, log=lambda *a: None)
    assert (tmp_path / "ray/scores.csv").read_text() == (tmp_path / "local/scores.csv").read_text()
    assert rows == ref and not (tmp_path / "ray/.partial").exists()
