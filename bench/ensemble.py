"""Ensembles of flow heads, measured before building them: several models trained alike but for the seed,
their per-scale log-likelihoods averaged before the maps are made.

    python bench/ensemble.py --strips --category brick --epochs 30 --seeds 9826 1 2 3 4 5 --members 2
    python bench/ensemble.py --data-root ../shared/data --category magnetic_tile --epochs 30 --seeds 9826 1 2 3 4 5

The seeds are trained one by one (last pass, 10 % of train/good held out for thresholds, as bench/quality.py);
each single model is scored on the test split, and every group of `--members` consecutive seeds is scored
as one ensemble: mean over members of each scale's log-likelihood map, then `score_maps` as for one model.
Written to bench/results/ensemble_<dataset>_<category>.json.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np
import torch

from common import dev_data, environment, table, write_result
from quality import both_maps_metrics, _clean
from msflow.anomaly_map import score_maps
from msflow.core import get_config, get_device
from msflow.data import MVTecDataset
from msflow.detector import score_batches, score_dataset
from msflow.engine import fit


def ensemble_score(models, top_k):
    "A `score_batches` scorer for several models: the mean of their per-scale log-likelihoods, then `score_maps`."
    @torch.no_grad()
    def score(images):
        per_model = [m.eval().log_likelihoods(images) for m in models]
        logps = [torch.stack(ls).mean(0) for ls in zip(*per_model)]
        return {k: v.numpy() for k, v in score_maps(logps, images.shape[-2:], top_k).items()}
    return score


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root"); p.add_argument("--demo", action="store_true"); p.add_argument("--strips", action="store_true")
    p.add_argument("--category", default="magnetic_tile"); p.add_argument("--preset", default="lite")
    p.add_argument("--epochs", type=int, default=30); p.add_argument("--seeds", type=int, nargs="+", default=[9826, 1, 2, 3, 4, 5])
    p.add_argument("--members", type=int, default=2); p.add_argument("--threads", type=int, default=1)
    p.add_argument("--name", default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    root, dataset = dev_data(a.category, a.demo, a.strips, a.data_root)
    dataset = "data" if dataset == "mvtec" else dataset
    name = a.name or f"ensemble_{dataset}_{a.category}_{a.preset}"
    res = dict(bench="ensemble", dataset=dataset, category=a.category, preset=a.preset, epochs=a.epochs, members=a.members,
               env=environment(get_device("cpu")), singles=[], ensembles=[])
    models = {}
    for seed in a.seeds:
        cfg = get_config(a.preset, epochs=a.epochs, seed=seed, val_fraction=0.1, device="cpu")
        t0 = time.perf_counter()
        det, _ = fit(root, a.category, None, cfg, progress=False, evaluate_test=False, log=lambda *_: None)
        train_s = time.perf_counter() - t0
        models[seed] = det.model
        test = MVTecDataset(root, a.category, "test", det.input_size)
        m = both_maps_metrics(score_dataset(det.model, test, cfg, progress=False), cfg.top_k)
        res["singles"].append(dict(seed=seed, train_seconds=train_s, metrics=m))
        print(f"seed {seed}: {', '.join(f'{k} {100 * v:.1f}' for k, v in m['official'].items() if v is not None)} ({train_s:.0f} s)", flush=True)
        g = a.seeds[a.seeds.index(seed) // a.members * a.members:][:a.members]
        if seed == g[-1] and len(g) == a.members:  # a full group: score the ensemble
            sc = score_batches(test, ensemble_score([models[s] for s in g], cfg.top_k), cfg.batch_size, progress=False)
            m = both_maps_metrics(sc, cfg.top_k)
            res["ensembles"].append(dict(seeds=g, metrics=m))
            print(f"ensemble {g}: {', '.join(f'{k} {100 * v:.1f}' for k, v in m['official'].items() if v is not None)}", flush=True)
        write_result(name, _clean(res))
    rows = []
    for what, rs in (("single", res["singles"]), (f"ensemble of {a.members}", res["ensembles"])):
        for mp in ("official", "raw"):
            row = dict(model=what, maps=mp, n=len(rs))
            for k in ("image_auroc", "pixel_auroc", "aupro"):
                xs = [r["metrics"][mp][k] for r in rs if r["metrics"][mp][k] is not None]
                row[k] = f"{100 * np.mean(xs):.1f} ± {100 * np.std(xs):.1f}"
            rows.append(row)
    print(table(rows, ["model", "maps", "n", "image_auroc", "pixel_auroc", "aupro"]))


if __name__ == "__main__":
    main()
