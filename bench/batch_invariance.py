"""Do a row's scores depend on how the images are batched, or on the number of threads? PyTorch and ONNX Runtime.

A lite model (random backbone weights: the arithmetic, not the quality, is measured) at 256x256 scores 12 generated
images with every combination of intra-op threads (1, 2, 4, 5, 8, 16) and batch size (1, 2, 3, 4, 12); each output
is compared with the one of 1 thread and batches of 4, bit for bit. Thread counts above the machine's cores are
oversubscribed: slower, but the kernels split their work exactly as they would on a machine with that many cores.
Last, ONNX Runtime again with the top-k mean of `msflow.anomaly_map.image_score` written as a product with a constant
vector (1/k, ..., 1/k), the change that makes its outputs the same for every thread count and batch size.

Usage: python bench/batch_invariance.py [--out bench/results/batch_invariance_cpu.json]
"""
import argparse, json, os, sys, tempfile, warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np
import torch

from common import RESULTS, environment
from msflow import anomaly_map
from msflow.deploy import _probe_images, export_onnx, load_onnx
from msflow.detector import Detector
from msflow.model import MSFlow

THREADS, BATCHES, KEYS = (1, 2, 4, 5, 8, 16), (1, 2, 3, 4, 12), ("score", "raw_score", "raw", "mul")


def sweep(score) -> list[dict]:
    "Largest difference of each output from the reference (1 thread, batches of 4), per thread count and batch size."
    ref, rows = score(1, 4), []
    for t in THREADS:
        for b in BATCHES:
            got = score(t, b)
            rows.append(dict(threads=t, batch=b, **{k: float(np.abs(got[k].astype(np.float64) - ref[k]).max()) for k in KEYS}))
    return rows


def _mean_last(x):  # the mean over the last axis as a product with a constant vector: a fixed order of sums in ONNX Runtime
    return (x @ torch.full((x.shape[-1], 1), 1.0 / x.shape[-1], dtype=x.dtype, device=x.device))[..., 0]


def use_product_mean():
    "Patch `msflow.anomaly_map.image_score`'s top-k mean into a product (what `export_onnx` then traces)."
    anomaly_map.image_score = lambda m, top_k=0.03: _mean_last(m.flatten(1).topk(anomaly_map.top_k_count(m.shape[-2:], top_k), dim=1).values)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(RESULTS / "batch_invariance_cpu.json"))
    a = p.parse_args()
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    det = Detector(MSFlow.from_preset("lite", pretrained=False, device="cpu").eval(), 0.5, 10.0)
    images = _probe_images(det.input_size, 12, seed=3)

    def torch_score(threads, batch):
        torch.set_num_threads(threads); det.model.config = det.config.replace(batch_size=batch)
        return det.score_images(images)
    res = dict(env=environment(torch.device("cpu")), images=12, input_size=list(det.input_size), torch=sweep(torch_score))
    tmp = Path(tempfile.mkdtemp())
    for name, patch in (("onnxruntime", None), ("onnxruntime_topk_product", use_product_mean)):
        if patch: patch()
        f = export_onnx(det, tmp / f"{name}.onnx")
        res[name] = sweep(lambda threads, batch: load_onnx(f, threads=threads, batch_size=batch).score_images(images))
    for name in ("torch", "onnxruntime", "onnxruntime_topk_product"):
        same = [(r["threads"], r["batch"]) for r in res[name] if max(r[k] for k in KEYS) == 0]
        print(f"{name}: bitwise equal to 1 thread, batches of 4, for (threads, batch) in {same}; "
              f"largest raw_score difference {max(r['raw_score'] for r in res[name]):.1e}")
    Path(a.out).write_text(json.dumps(res, indent=2))
    print(f"written {a.out}")


if __name__ == "__main__":
    main()
