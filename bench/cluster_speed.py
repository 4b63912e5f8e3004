"""Many categories and large image sets on one machine: `msflow.cluster` locally against a Ray cluster, side by side.

Training: the same demo categories (the lite preset with its bundled weights, small images, a few passes) trained
with `train_categories(cluster="local")` (one after another in this process, with 1 thread and with all cores) and with
`cluster="ray"` (a Ray cluster started for the call, one task of 1 CPU per category); categories per hour counts
the whole call, Ray's start and stop included. Prediction: ~200 images scored by the local path (with 0, 1 or 2
DataLoader workers decoding ahead: does overlapping decoding with compute help?) and by `predict_cluster` with 1 and
2 model replicas (actors of 1 CPU). Finally, from the H200 measurements in `engine_gpu_h200.json` and
`gpu_h200.json`, a projection of the time to train all 15 MVTec AD categories with the paper preset on N GPUs.

Usage: python bench/cluster_speed.py [--out bench/results/cluster_speed_cpu.json] [--categories 4] [--epochs 10] [--n-train 48]
"""
import argparse, json, math, os, shutil, sys, tempfile, time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch

from common import RESULTS, environment, loadavg
from msflow.cluster import predict_cluster, train_categories
from msflow.demo_data import make_demo_dataset
from msflow.engine import load

# MVTec AD: train/good and test images per category (the data set's published counts)
MVTEC = dict(bottle=(209, 83), cable=(224, 150), capsule=(219, 132), carpet=(280, 117), grid=(264, 78), hazelnut=(391, 110),
             leather=(245, 124), metal_nut=(220, 115), pill=(267, 167), screw=(320, 160), tile=(230, 117), toothbrush=(60, 42),
             transistor=(213, 100), wood=(247, 79), zipper=(240, 151))


def quiet(*a): pass


def projection(results: Path = RESULTS) -> dict:
    """Hours to train all 15 MVTec AD categories with the paper preset (100 passes, batch 8, fp32) on 1..15 GPUs, one
    category per GPU at a time (longest first), from per-image costs measured on an H200."""
    eng = json.loads((results / "engine_gpu_h200.json").read_text())
    gpu = json.loads((results / "gpu_h200.json").read_text())
    e = next(r for r in eng["rows"] if r["preset"] == "paper" and r["amp"] == "off" and not r["compile"])
    per_pass_image = e["train_seconds"] / (eng["epochs"] * e["train_images"])  # fit's training time, feature cache included
    test_ips = e["test_images_per_second"]  # evaluation as fit does it (metrics, figures)
    flows_ips = next(r["images_per_s"] for r in gpu["rows"] if r["preset"] == "paper" and r["what"] == "train from cache"
                     and r["batch"] == 8 and r["precision"] == "fp32")
    def cat_seconds(n_train, n_test, per_img): return n_train * 100 * per_img + n_test / test_ips
    out = {}
    for name, per_img in (("measured_fit", per_pass_image), ("flows_only", 1 / flows_ips)):
        secs = sorted((cat_seconds(a, b, per_img) for a, b in MVTEC.values()), reverse=True)
        rows = []
        for g in (1, 2, 3, 4, 5, 8, 15):
            load_ = [0.0] * g
            for s in secs: load_[load_.index(min(load_))] += s  # longest first onto the least loaded GPU
            rows.append(dict(gpus=g, hours=max(load_) / 3600))
        out[name] = dict(seconds_per_image_pass=per_img, total_gpu_hours=sum(secs) / 3600, longest_category_hours=secs[0] / 3600, rows=rows)
    out["basis"] = (f"{eng['gpu']}, paper preset fp32 batch 8, 100 passes; 'measured_fit': fit's train_seconds per image-pass on "
                    f"{e['train_images']} demo images x {eng['epochs']} passes (feature cache included); 'flows_only': "
                    f"training from the cache at {flows_ips:.0f} images/s; test at {test_ips:.0f} images/s")
    return out


def paragraph(p: dict) -> str:
    m, f = p["measured_fit"], p["flows_only"]
    h = lambda rows, g: next(r["hours"] for r in rows if r["gpus"] == g) * 60
    return (f"Projection for all 15 MVTec AD categories with the paper preset (100 passes, batch 8, float32), from the "
            f"per-category costs measured on one H200: between {f['total_gpu_hours'] * 60:.0f} GPU-minutes in all (training the "
            f"flows from the feature cache only) and {m['total_gpu_hours'] * 60:.0f} (fit's whole measured time of a 10-pass run, "
            "feature cache and evaluation set-up included, spread over each pass: an upper bound). With one category per GPU, "
            f"longest first, the upper bound becomes {h(m['rows'], 1):.0f} min on 1 GPU, {h(m['rows'], 2):.0f} on 2, "
            f"{h(m['rows'], 4):.0f} on 4 and {h(m['rows'], 8):.0f} on 8; beyond that the largest category (hazelnut, 391 "
            f"training images, {m['longest_category_hours'] * 60:.0f} min) sets the time, so 15 GPUs gain little over 8. "
            "Data loading, process start and the model download are not included.")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(RESULTS / "cluster_speed_cpu.json"))
    ap.add_argument("--categories", type=int, default=4); ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--n-train", type=int, default=48); ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--input-size", type=int, default=128); ap.add_argument("--n-predict", type=int, default=200)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    res = dict(env=environment(torch.device("cpu")), conditions={}, train=[], predict=[])
    import ray
    res["env"]["ray"] = ray.__version__
    try:
        root = make_demo_dataset(tmp / "data", n_train=a.n_train, n_test=12, size=a.size, seed=0)
        base = ["brick", "grass", "gravel"]
        cats = [base[i % 3] if i < 3 else f"{base[i % 3]}_copy{i // 3}" for i in range(a.categories)]  # copies: same work
        for c in cats[3:]: shutil.copytree(root / c.split("_copy")[0], root / c)
        kw = dict(preset="lite", input_size=a.input_size, epochs=a.epochs, batch_size=8, device="cpu", progress=False)
        res["conditions"] = dict(categories=cats, train_images_per_category=a.n_train, test_images_per_category=12,
                                 image_size=a.size, fit=kw, cpus=os.cpu_count(),
                                 note="all on this machine; Ray's start and stop are inside the ray row's wall time; "
                                      "local predict at 1 thread (as each actor), median of --reps")
        runs = {}
        for mode, cpus in (("local", 1), ("local", os.cpu_count()), ("ray", 1)):
            t0 = time.perf_counter()
            s = train_categories(root, cats, tmp / f"runs_{mode}{cpus}", cluster=mode, cpus_per_task=cpus, log=quiet, **kw)
            wall = time.perf_counter() - t0
            assert not s["failed"], s["failed"]
            runs[mode] = tmp / f"runs_{mode}{cpus}"
            row = dict(cluster=mode, workers=1 if mode == "local" else os.cpu_count(), threads_per_category=cpus,
                       wall_seconds=wall, categories_per_hour=len(cats) / wall * 3600,
                       mean_train_seconds=s["mean"]["train_seconds"])
            res["train"].append(row); print(row, flush=True)
        t0 = time.perf_counter(); ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR"); ray.shutdown()
        res["conditions"]["ray_start_stop_seconds"] = time.perf_counter() - t0

        # prediction: ~200 images of the demo test kind at the data size, scored by the brick model
        pred = make_demo_dataset(tmp / "pred", categories=["brick"], n_train=1, n_test=a.n_predict, size=256, seed=5) / "brick/test"
        run = runs["ray"] / "brick"
        torch.set_num_threads(1)  # one thread, as each actor: stable on a shared machine, and like for like
        n = sum(1 for p in pred.rglob("*.png"))
        res["conditions"].update(predict_images=n, predict_image_size=256)
        for workers in (0, 1, 2):
            det = load(run, num_workers=workers)
            tv, ts = [], []
            for _ in range(a.reps):
                t0 = time.perf_counter(); folder = det.image_folder([pred]); tv.append(time.perf_counter() - t0)
                t0 = time.perf_counter(); det.score_paths(folder, progress=False); ts.append(time.perf_counter() - t0)
            tv, ts = sorted(tv)[len(tv) // 2], sorted(ts)[len(ts) // 2]
            row = dict(path="local", num_workers=workers, threads=torch.get_num_threads(), validate_seconds=tv, score_seconds=ts,
                       images_per_second=n / (tv + ts), scoring_images_per_second=n / ts, reps=a.reps, statistic="median")
            res["predict"].append(row); print(row, flush=True)
        ray.init(num_cpus=os.cpu_count() + 1, include_dashboard=False, logging_level="ERROR")  # a logical CPU for decoding
        try:
            for actors in (1, 2):
                t0 = time.perf_counter()
                predict_cluster(run, [pred], tmp / f"pred_ray{actors}", cluster="ray", num_actors=actors, log=quiet)
                wall = time.perf_counter() - t0
                row = dict(path="ray", actors=actors, threads_per_actor=1, wall_seconds=wall, images_per_second=n / wall,
                           note="Ray already running; actor start and model load included")
                res["predict"].append(row); print(row, flush=True)
        finally: ray.shutdown()
        same = (tmp / "pred_ray1/scores.csv").read_text() == (tmp / "pred_ray2/scores.csv").read_text()
        res["conditions"]["ray_1_and_2_actors_same_scores_csv"] = same
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    try:
        res["projection_mvtec_paper_h200"] = p = projection()
        res["projection_paragraph"] = paragraph(p); print(res["projection_paragraph"])
    except (OSError, StopIteration, KeyError) as e: print(f"no projection: {e}")
    res["env"]["loadavg_end"] = loadavg()
    Path(a.out).write_text(json.dumps(res, indent=2))
    print(f"written {a.out}")


if __name__ == "__main__":
    main()
