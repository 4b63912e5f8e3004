"""Detection quality of msflow, last pass, several seeds, with ablations; add and mul maps scored from one run.

    python bench/quality.py --demo --category brick --epochs 20 --seeds 9826 1 2 --variants base no_fusion equal_depths
    python bench/quality.py --data-root ../shared/data --category magnetic_tile --epochs 30 --seeds 9826 1 2
    python bench/quality.py --data-root ../shared/data --category magnetic_tile --from-run /tmp/runs/mtd_lite256_e30

    python bench/quality.py --strips --category brick --epochs 30 --variants base keep_aspect

Variants: `base` (the preset), `no_fusion` (fusion=False), `equal_depths` (parallel_blocks=(5,5,5)),
`keep_aspect` (aspect="keep": the training images' aspect ratio at the same pixel budget), `res320`
(input_size 320² instead of 256²: 1.56 times the pixels), `keep_aspect_320` (both), `heads2` (two flow
heads, log-likelihoods averaged), `keep_aspect_heads2` (the aspect kept and two heads), and two one-seed
probes of where the gap to FastFlow and CFLOW on the strips comes from: `keep_aspect_nopool` (no 3x3/2
pooling: maps of twice the resolution, as those methods use) and `keep_aspect_lr1e-3` (FastFlow's
learning rate); `keep_aspect_heads2_lr1e-3` adds two heads to it, and `lr1e-3` is lite at that learning rate.
`--strips` uses the demo categories cut into 160 x 400 strips (make_demo_dataset(size=400, height=160)).
For every run the test split is scored once and every map (add, mul, and the raw map −Λ that is not
normalised per image) is evaluated with every metric:
image AUROC (top-k mean of the map), pixel AUROC, AU-PRO (MVTec definition, FPR <= 0.3) and the
paper-style 800-threshold PRO. The official pairing is image/PRO on mul, pixel AUROC on add.
Results are appended run by run to bench/results/quality_<dataset>_<category>.json (existing runs
with the same variant and seed are replaced), so an interrupted job keeps what it finished.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np
import torch

from common import _clean, summarise as _summarise, RESULTS, dev_data, environment, loadavg, table, write_result
from msflow.anomaly_map import image_score
from msflow.core import get_config, get_device
from msflow.data import MVTecDataset
from msflow.detector import score_dataset
from msflow.engine import fit, load
from msflow.metrics import aupro, aupro_paper, image_auroc, pixel_auroc

VARIANTS = {"base": {}, "no_fusion": dict(fusion=False), "equal_depths": dict(parallel_blocks=(5, 5, 5)),
            "keep_aspect": dict(aspect="keep"), "res320": dict(input_size=(320, 320)),
            "keep_aspect_320": dict(aspect="keep", input_size=(320, 320)),
            "heads2": dict(heads=2), "keep_aspect_heads2": dict(aspect="keep", heads=2),
            "keep_aspect_nopool": dict(aspect="keep", pool="none"), "keep_aspect_lr1e-3": dict(aspect="keep", lr=1e-3),
            "keep_aspect_heads2_lr1e-3": dict(aspect="keep", heads=2, lr=1e-3), "lr1e-3": dict(lr=1e-3)}


def both_maps_metrics(sc, top_k: float) -> dict:
    "Every metric on the add, mul and raw maps of one scored test split (raw: −Λ, not normalised per image, comparable across images)."
    out = {}
    for name, maps in (("add", sc.add), ("mul", sc.mul), ("raw", sc.raw)):
        s = image_score(torch.from_numpy(maps), top_k).numpy()
        out[name] = dict(image_auroc=image_auroc(sc.labels, s), pixel_auroc=pixel_auroc(sc.masks, maps),
                         aupro=aupro(sc.masks, maps), aupro_paper=aupro_paper(sc.masks, maps))
    # the official pairing (what `msflow train` reports)
    out["official"] = dict(image_auroc=out["mul"]["image_auroc"], pixel_auroc=out["add"]["pixel_auroc"],
                           aupro=out["mul"]["aupro"], aupro_paper=out["mul"]["aupro_paper"])
    return out


def summarise(runs: list[dict]) -> list[dict]:
    "Mean and std over seeds per variant and map, for the table."
    return _summarise(runs, ("official", "add", "mul", "raw"), ("image_auroc", "pixel_auroc", "aupro", "aupro_paper"), "maps")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=None)
    p.add_argument("--demo", action="store_true", help="generate msflow's demo data (60 train / 30 test images per category)")
    p.add_argument("--strips", action="store_true", help="the demo category cut into 160 x 400 strips (60 train / 30 test images)")
    p.add_argument("--category", default="magnetic_tile")
    p.add_argument("--preset", default="lite")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seeds", type=int, nargs="+", default=[9826, 1, 2])
    p.add_argument("--variants", nargs="+", default=["base"], choices=list(VARIANTS))
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="auto")
    p.add_argument("--from-run", default=None, help="score an existing run folder (its variant, seed and passes read from its configuration) instead of training")
    p.add_argument("--name", default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)

    if not (a.demo or a.strips or a.data_root): p.error("give --data-root, --demo or --strips")
    root, dataset = dev_data(a.category, a.demo, a.strips, a.data_root)
    name = a.name or f"quality_{'demo' if a.demo else 'strips' if a.strips else 'data'}_{a.category}"
    path = RESULTS / f"{name}.json"
    res = json.loads(path.read_text()) if path.exists() else dict(bench="quality", dataset=dataset, category=a.category, runs=[])
    device = get_device(a.device)
    res["env"] = environment(device)

    def record(run):
        same = lambda r: (r["variant"], r["seed"], r["epochs"]) == (run["variant"], run["seed"], run["epochs"])
        if path.exists(): res["runs"] = json.loads(path.read_text())["runs"]  # rows another job wrote meanwhile stay
        res["runs"] = [r for r in res["runs"] if not same(r)] + [run]
        res["env"]["loadavg_end"] = loadavg()
        write_result(name, _clean(res))
        o = run["metrics"]["official"]
        print(f"{run['variant']} seed {run['seed']}: image AUROC {o['image_auroc']:.3f}, pixel AUROC {o['pixel_auroc']:.3f}, "
              f"AU-PRO {o['aupro']:.3f}; train {run['train_seconds']:.0f}s", flush=True)

    if a.from_run:
        det = load(a.from_run, device)
        cfg = det.config
        test = MVTecDataset(root, a.category, "test", cfg.input_size)
        sc = score_dataset(det.model, test, cfg, progress=False)
        m = json.loads((Path(a.from_run) / "metrics.json").read_text())
        variant = next((v for v, kw in VARIANTS.items() if kw and all(getattr(cfg, k) == x for k, x in kw.items())), "base")
        if cfg.amp != "off": variant += f"_{cfg.amp}"  # trained with mixed precision (flows)
        if cfg.val_fraction == 0: variant += "_noval"  # no validation split: trained on all of train/good
        record(dict(variant=variant, seed=cfg.seed, epochs=cfg.epochs, config=cfg.to_dict(), source=str(a.from_run),
                    train_seconds=m.get("train_seconds"), test_images_per_second=len(test) / sc.seconds,
                    metrics=both_maps_metrics(sc, cfg.top_k)))
    else:
        for v in a.variants:
            for seed in a.seeds:
                cfg = get_config(a.preset, epochs=a.epochs, seed=seed, val_fraction=a.val_fraction, device=str(device), **VARIANTS[v])
                t0 = time.perf_counter()
                det, m = fit(root, a.category, None, cfg, progress=False, evaluate_test=False, log=lambda *_: None)
                train_s = time.perf_counter() - t0
                test = MVTecDataset(root, a.category, "test", det.input_size)  # the shape fit chose (aspect="keep")
                sc = score_dataset(det.model, test, det.config, progress=False)
                record(dict(variant=v, seed=seed, epochs=a.epochs, config=det.config.to_dict(), train_seconds=train_s,
                            test_images_per_second=len(test) / sc.seconds, metrics=both_maps_metrics(sc, cfg.top_k)))
    print()
    print(table(summarise(res["runs"]), ["variant", "epochs", "maps", "seeds", "image_auroc", "pixel_auroc", "aupro", "aupro_paper"]))
    print(f"written {path}")


if __name__ == "__main__":
    main()
