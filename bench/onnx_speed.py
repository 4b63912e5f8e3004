"""PyTorch eager vs ONNX Runtime for CPU inference of one detector, side by side in one process.

    python bench/onnx_speed.py                      # lite preset, 256², 2 threads each, batches 1 and 8
    python bench/onnx_speed.py --threads 1          # one thread each: bench/results/onnx_speed_cpu_1thread.json
    python bench/onnx_speed.py --no-spin            # ONNX Runtime's idle workers block: bench/results/onnx_speed_cpu_nospin.json

The detector is the lite preset at 256² with its bundled pretrained backbone and randomly initialised
flows (speed does not depend on what the flows learnt). Measured:

- export: seconds of `msflow.deploy.export_onnx` (trace, optimise, check against PyTorch, write), and of
  loading the file into an ONNX Runtime session;
- inference (uint8 images already at 256² in memory -> scores and all maps, `score_images`): median
  latency per batch and images/s at batch 1 and 8, PyTorch (float32 eager, the model's default path,
  `torch.set_num_threads(T)`) and ONNX Runtime (T intra-op threads) interleaved call by call, in
  alternating order, with a short pause between calls;
- end to end: `msflow.engine.predict` on a folder of PNG files (reading, decoding, Lanczos resizing
  included), both backends interleaved;
- equality: the largest score and map differences between the two backends on the timed images;
- memory: in a fresh process per backend (so one backend's memory does not hide the other's), the
  resident set size (RSS, /proc/self/statm) added by loading the detector, and the peak RSS above
  that while scoring batches of 8 (sampled every 2 ms).

Writes bench/results/onnx_speed_cpu.json and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np
import torch

from common import PeakMemory, _rss_bytes, environment, loadavg, median, table, write_result

SIZE = 256


def build_run(folder: Path) -> Path:
    "A run folder holding the lite detector (bundled backbone, random flows, arbitrary thresholds)."
    from msflow.core import get_config, seed_everything
    from msflow.detector import Detector
    from msflow.model import MSFlow
    seed_everything(0)
    det = Detector(MSFlow(get_config("lite", input_size=SIZE, device="cpu")).eval(), 0.5, 50.0)
    folder.mkdir(parents=True, exist_ok=True)
    det.save(folder / "model.pt")
    return folder


def memory_child(backend: str, path: str, threads: int, n_batches: int = 3) -> dict:
    "Run in a fresh process: RSS added by loading one backend's detector, and peak RSS above that while scoring."
    torch.set_num_threads(threads)
    import onnxruntime  # noqa: F401  both backends' libraries are imported before the baseline
    from msflow.deploy import load_onnx, _probe_images
    from msflow.detector import load_detector
    x = _probe_images((SIZE, SIZE), 8, seed=0)
    base = _rss_bytes()
    det = load_detector(path, "cpu", batch_size=8) if backend == "torch" else load_onnx(path, threads=threads, batch_size=8)
    loaded = _rss_bytes()
    with PeakMemory(torch.device("cpu")) as pm:
        for _ in range(n_batches): det.score_images(x)
    return dict(load_rss_mib=round((loaded - base) / 2**20, 1), inference_peak_above_loaded_mib=round(pm.delta_mib, 1),
                total_above_baseline_mib=round((pm._peak - base) / 2**20, 1))


def run_memory(backend: str, path: Path, threads: int) -> dict:
    r = subprocess.run([sys.executable, __file__, "--memory-child", backend, str(path), "--threads", str(threads)],
                       capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if r.returncode != 0: return dict(error=r.stderr.strip().splitlines()[-1:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2, help="torch threads and ONNX Runtime intra-op threads (default: %(default)s)")
    p.add_argument("--reps", type=int, default=20, help="timed calls per backend and batch size (default: %(default)s)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--n-files", type=int, default=64, help="PNG files for the end-to-end predict (default: %(default)s)")
    p.add_argument("--predict-reps", type=int, default=3)
    p.add_argument("--no-spin", action="store_true", help="ONNX Runtime workers block instead of spinning when idle "
                   "(session.intra_op.allow_spinning=0): fairer to PyTorch in the same process on a busy machine")
    p.add_argument("--name", default=None, help="results file bench/results/NAME.json (default: onnx_speed_cpu, "
                   "or onnx_speed_cpu_Tthreads when --threads is not 2)")
    p.add_argument("--memory-child", nargs=2, metavar=("BACKEND", "PATH"), help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.memory_child:
        print(json.dumps(memory_child(a.memory_child[0], a.memory_child[1], a.threads))); return

    torch.set_num_threads(a.threads)
    import onnx, onnxruntime as ort, PIL
    from msflow import engine
    from msflow.demo_data import make_demo_dataset
    from msflow.deploy import export_onnx, load_onnx, onnx_detector, _probe_images
    from msflow.detector import load_detector

    env = environment(torch.device("cpu"))
    env.update(onnxruntime=ort.__version__, onnx=onnx.__version__, numpy=np.__version__, pillow=PIL.__version__,
               ort_intra_op_threads=a.threads, torch_threads=torch.get_num_threads(), ort_providers=["CPUExecutionProvider"])
    tmp = Path(tempfile.mkdtemp(prefix="onnx-speed-"))
    run = build_run(tmp / "run")
    det = load_detector(run, "cpu")
    res = dict(conditions=env, preset="lite", input_size=[SIZE, SIZE], weights="bundled backbone, random flows")

    # export and loading
    t0 = time.perf_counter(); f = export_onnx(det, tmp / "model.onnx"); t_export = time.perf_counter() - t0
    t0 = time.perf_counter(); od = load_onnx(f, threads=a.threads); t_load = time.perf_counter() - t0
    if a.no_spin:
        from msflow.deploy import OnnxDetector
        so = ort.SessionOptions(); so.intra_op_num_threads = a.threads; so.log_severity_level = 3
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        od = OnnxDetector(ort.InferenceSession(str(f), so, providers=["CPUExecutionProvider"]), od.metadata, f, "cpu", threads=a.threads)
    env["ort_allow_spinning"] = not a.no_spin
    t0 = time.perf_counter(); onnx_detector(det, run); t_first = time.perf_counter() - t0  # exports into the run folder
    t0 = time.perf_counter(); onnx_detector(det, run); t_cached = time.perf_counter() - t0  # loads the cached file
    t0 = time.perf_counter(); load_detector(run, "cpu"); t_torch_load = time.perf_counter() - t0
    res["export"] = dict(export_onnx_s=round(t_export, 2), load_onnx_session_s=round(t_load, 2),
                         onnx_detector_first_call_s=round(t_first, 2), onnx_detector_cached_call_s=round(t_cached, 2),
                         torch_load_detector_s=round(t_torch_load, 2), file_mib=round(f.stat().st_size / 2**20, 1))
    print(f"export {t_export:.1f} s, ORT session {t_load:.2f} s, onnx_detector first {t_first:.1f} s / cached {t_cached:.2f} s, "
          f"file {f.stat().st_size / 2**20:.1f} MiB", flush=True)

    # inference, interleaved
    backends = dict(torch=det, onnxruntime=od)
    xs = {b: _probe_images((SIZE, SIZE), b, seed=b) for b in a.batches}
    diffs = {}
    for b, x in xs.items():  # warm-up, and equality on the same images
        r_t, r_o = det.score_images(x), od.score_images(x)
        diffs[b] = {k: float(np.abs(r_t[k] - r_o[k]).max()) for k in r_t}
        diffs[b].update({f"{k}_relative": float(np.abs(r_t[k] - r_o[k]).max() / max(np.abs(r_t[k]).max(), 1e-12)) for k in r_t})
    times = {(b, n): [] for b in a.batches for n in backends}
    for rep in range(a.reps):
        for b, x in xs.items():
            order = list(backends) if rep % 2 == 0 else list(backends)[::-1]
            for n in order:
                time.sleep(0.05)  # let the other runtime's worker threads go idle
                t0 = time.perf_counter(); backends[n].score_images(x); times[(b, n)].append(time.perf_counter() - t0)
    rows = []
    for (b, n), ts in times.items():
        m = median(ts)
        rows.append(dict(backend=n, batch=b, median_ms=round(1000 * m, 1), images_per_s=round(b / m, 2),
                         min_ms=round(1000 * min(ts), 1), max_ms=round(1000 * max(ts), 1), reps=len(ts),
                         raw_ms=[round(1000 * t, 1) for t in ts]))
    for b in a.batches:
        t, o = (next(r for r in rows if r["backend"] == n and r["batch"] == b) for n in backends)
        o["speedup_vs_torch"] = round(t["median_ms"] / o["median_ms"], 2)
    res["inference"] = rows
    res["max_difference"] = {str(b): d for b, d in diffs.items()}
    print(table(rows, ["backend", "batch", "median_ms", "images_per_s", "min_ms", "max_ms", "speedup_vs_torch"]), flush=True)

    # end to end: engine.predict on PNG files (decoding and resizing included)
    data = make_demo_dataset(tmp / "data", categories=["brick"], n_train=a.n_files, n_test=3, size=300, seed=0)
    folder = data / "brick" / "train" / "good"
    n_files = len(list(folder.glob("*.png")))
    pred = {n: [] for n in backends}
    rows_by = {}
    quiet = lambda *x, **k: None
    for n in backends: rows_by[n] = engine.predict(backends[n], [str(folder)], None, progress=False, log=quiet)  # warm-up
    for rep in range(a.predict_reps):
        for n in (list(backends) if rep % 2 == 0 else list(backends)[::-1]):
            time.sleep(0.05)
            t0 = time.perf_counter(); engine.predict(backends[n], [str(folder)], None, progress=False, log=quiet)
            pred[n].append(time.perf_counter() - t0)
    res["predict"] = [dict(backend=n, files=n_files, file_size="300x300 PNG", batch_size=det.config.batch_size,
                           median_s=round(median(ts), 2), images_per_s=round(n_files / median(ts), 2), reps=len(ts))
                      for n, ts in pred.items()]
    res["predict_max_score_difference"] = float(max(abs(r["score"] - q["score"]) for r, q in zip(rows_by["torch"], rows_by["onnxruntime"])))
    res["predict_same_decisions"] = all(r["anomalous"] == q["anomalous"] for r, q in zip(rows_by["torch"], rows_by["onnxruntime"]))
    print(table(res["predict"], ["backend", "files", "median_s", "images_per_s"]), flush=True)

    # memory, one fresh process per backend
    res["memory"] = dict(kind="process RSS (/proc/self/statm), fresh process per backend, both libraries imported before the baseline",
                         torch=run_memory("torch", run, a.threads), onnxruntime=run_memory("onnxruntime", f, a.threads))
    print(json.dumps(res["memory"], indent=1), flush=True)
    env["loadavg_end"] = loadavg()
    name = a.name or ("onnx_speed_cpu" if a.threads == 2 else f"onnx_speed_cpu_{a.threads}thread{'s' if a.threads > 1 else ''}") + ("_nospin" if a.no_spin else "")
    print("written:", write_result(name, res))


if __name__ == "__main__":
    main()
