"""The engine end to end on one CUDA GPU: `fit` on a demo category, eager against torch.compile, fp32 against bf16.

For each setting this trains through `msflow.engine.fit` (feature cache, the official schedule, thresholds,
last-pass evaluation: everything `msflow train` does, data loading included) and records the training
time, the test throughput and the metrics. A second `compile` run in the same process shows what the
compiled kernels cost when they are already built (torch caches them). Random backbone weights are
used for the paper preset (no network); the lite preset uses its bundled ImageNet weights.
Usage: python bench/gpu_engine.py [--out results.json] [--epochs 10] [--presets lite,paper]
"""
import argparse, json, os, tempfile, time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch

from msflow.demo_data import make_demo_dataset
from msflow.engine import fit


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="gpu_engine.json"); ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--presets", default="lite,paper"); ap.add_argument("--device", default="cuda")
    ap.add_argument("--category", default="brick")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    root = make_demo_dataset(tmp / "data", seed=0)
    res = dict(gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu", torch=torch.__version__,
               epochs=a.epochs, category=a.category, data_loading_included=True, rows=[])
    settings = [("off", False), ("bf16", False), ("bf16", True), ("bf16", True)]
    for preset in a.presets.split(","):
        extra = dict(weights="random") if preset == "paper" else {}
        for i, (amp, comp) in enumerate(settings):
            t0 = time.perf_counter()
            try:
                det, m = fit(root, a.category, None, preset=preset, progress=False, log=lambda *x, **k: None, device=a.device,
                             epochs=a.epochs, val_fraction=0.1, amp=amp, compile=comp, **extra)
                row = dict(preset=preset, amp=amp, compile=comp, repeat=i == 3, wall_seconds=time.perf_counter() - t0,
                           train_seconds=m["train_seconds"], test_images_per_second=m["test_images_per_second"],
                           image_auroc=m["image_auroc"], pixel_auroc=m["pixel_auroc"], aupro=m["aupro"],
                           train_images=det.info.get("n_train"))
            except Exception as e:
                row = dict(preset=preset, amp=amp, compile=comp, error=repr(e)[:500])
            res["rows"].append(row); print(row, flush=True)
            json.dump(res, open(a.out, "w"), indent=2)
            torch.cuda.empty_cache() if torch.cuda.is_available() else None


if __name__ == "__main__":
    main()
