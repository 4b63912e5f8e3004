"""Sharper anomaly maps: which scale localizes, and which options make the fused maps sharper. Last pass, several seeds.

    python bench/sharper.py --strips --category gravel --variants base --seeds 9826 1 2
    python bench/sharper.py --demo --category brick --variants base k1 fine_k1
    python bench/sharper.py --data-root ../shared/data --category magnetic_tile --variants base
    python bench/sharper.py --strips --category gravel --rescore          # score the saved runs again (new maps)

Variants (configuration changes): `base` (none), `k1` (coupling_kernels=(1, 1): per-pixel coupling networks), `k31`
((3, 1): spatial context in the first convolution only), `fine` (fine_pool_stride=1: the finest map at stride 4),
`fine_k1` and `fine_k31` (both).

Every run trains the `accurate` preset (on square images it is `lite`) with one variant's configuration changes, at
the presets' 100 passes with 10 % of train/good held out, saves the run folder under `--runs` (default
runs/sharper/), and scores the test split once. From the per-scale log-likelihoods of that one scoring pass every
map is built and evaluated (image AUROC as the top-k mean of the map, pixel AUROC, AU-PRO by the MVTec definition):

- `scale1`, `scale2`, `scale3`: one scale alone, −log p_s upsampled (finest first);
- `raw`: −Λ = −Σ_s Up(log p_s), the sum of the three (comparable across images);
- `mul`, `add`: the official maps (per image normalised);
- `znorm`: Σ_s Up((−log p_s − μ_s) / σ_s), each scale standardised by the mean and standard deviation of its
  −log p over the pixels of the held-out normal images, so that no scale swamps another; comparable across images;
- `official`: the official pairing (image AUROC and AU-PRO on mul, pixel AUROC on add), what `msflow train` reports;
- `map` (only for variants that change how scales are combined): that variant's maps in the official pairing.

Results are appended run by run to bench/results/sharper_<demo|strips|mvtec>_<category>.json (a rerun of a variant
and seed replaces its row, other jobs' rows are kept).
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
from msflow.anomaly_map import _up, add_map, image_score, mul_map
from msflow.core import get_config, get_device
from msflow.data import MVTecDataset
from msflow.engine import fit, load
from msflow.metrics import aupro, image_auroc, pixel_auroc

# configuration changes of each variant, on top of the accurate preset
VARIANTS = {"base": {}, "k1": dict(coupling_kernels=(1, 1)), "k31": dict(coupling_kernels=(3, 1)),
            "fine": dict(fine_pool_stride=1), "fine_k1": dict(fine_pool_stride=1, coupling_kernels=(1, 1)),
            "fine_k31": dict(fine_pool_stride=1, coupling_kernels=(3, 1))}
MAPS = ("scale1", "scale2", "scale3", "raw", "mul", "add", "znorm")


def loglik(model, dataset, batch_size=8) -> tuple[list[torch.Tensor], dict]:
    "Per-scale log-likelihoods (at feature resolution) of a whole split, and its labels and masks."
    logps, labels, masks = [], [], []
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0,
                                         collate_fn=lambda b: b)
    model.eval()
    for items in loader:
        x = torch.stack([it["image"] for it in items])
        with torch.no_grad(): logps.append([l.float() for l in model.log_likelihoods(x)])
        if "label" in items[0]:
            labels += [int(it["label"]) for it in items]
            masks += [it["mask"].numpy().astype(bool).reshape(x.shape[-2:]) for it in items]
    per_scale = [torch.cat(ls) for ls in zip(*logps)]
    return per_scale, dict(labels=np.array(labels), masks=np.stack(masks) if masks else None)


def scale_stats(val_logps: list[torch.Tensor]) -> list[tuple[float, float]]:
    "(mean, std) of −log p over all pixels of the held-out normal images, per scale."
    return [(float((-l).mean()), float((-l).std())) for l in val_logps]


def build_map(name: str, logps: list[torch.Tensor], size, stats) -> torch.Tensor:
    "One of `MAPS` for a batch of per-scale log-likelihoods; large where anomalous."
    if name.startswith("scale"): return -_up(logps[int(name[-1]) - 1], size)
    if name == "raw": return -sum(_up(l, size) for l in logps)
    if name == "mul": return mul_map(logps, size)
    if name == "add": return add_map(logps, size)
    if name == "znorm": return sum(_up((-l - m) / s, size) for l, (m, s) in zip(logps, stats))
    raise ValueError(name)


def evaluate(logps, truth, size, top_k, stats, chunk=64) -> dict:
    "Image AUROC, pixel AUROC and AU-PRO of every map."
    out = {}
    for name in MAPS:
        maps = torch.cat([build_map(name, [l[i:i + chunk] for l in logps], size, stats)
                          for i in range(0, len(logps[0]), chunk)]).numpy()
        scores = image_score(torch.from_numpy(maps), top_k).numpy()
        out[name] = dict(image_auroc=image_auroc(truth["labels"], scores), pixel_auroc=pixel_auroc(truth["masks"], maps),
                         aupro=aupro(truth["masks"], maps))
        del maps
    out["official"] = dict(image_auroc=out["mul"]["image_auroc"], pixel_auroc=out["add"]["pixel_auroc"], aupro=out["mul"]["aupro"])
    return out


def summarise(runs: list[dict]) -> list[dict]:
    "Mean and std over seeds per variant and map, for the table."
    return _summarise(runs, ("official", "scale1", "scale2", "scale3", "raw", "mul", "add", "znorm"), ("image_auroc", "pixel_auroc", "aupro"), "map")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=None)
    p.add_argument("--demo", action="store_true", help="the demo category, square (60 train / 30 test images)")
    p.add_argument("--strips", action="store_true", help="the demo category cut into 160 x 400 strips")
    p.add_argument("--category", default="magnetic_tile")
    p.add_argument("--preset", default="accurate")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--seeds", type=int, nargs="+", default=[9826, 1, 2])
    p.add_argument("--variants", nargs="+", default=["base"])
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", default="runs/sharper", help="where run folders are kept (for --rescore)")
    p.add_argument("--rescore", action="store_true", help="do not train: score the saved run folders of these variants and seeds again")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    if not (a.demo or a.strips or a.data_root): p.error("give --data-root, --demo or --strips")
    unknown = [v for v in a.variants if v not in VARIANTS]
    if unknown: p.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")

    root, kind = dev_data(a.category, a.demo, a.strips, a.data_root)
    name = f"sharper_{kind}_{a.category}"
    path = RESULTS / f"{name}.json"
    device = get_device("cpu")
    res = json.loads(path.read_text()) if path.exists() else dict(bench="sharper", dataset=kind, category=a.category, runs=[])
    res["env"] = environment(device)

    def record(run):
        same = lambda r: (r["variant"], r["seed"], r["epochs"]) == (run["variant"], run["seed"], run["epochs"])
        if path.exists(): res["runs"] = json.loads(path.read_text())["runs"]
        res["runs"] = [r for r in res["runs"] if not same(r)] + [run]
        res["env"]["loadavg_end"] = loadavg()
        write_result(name, _clean(res))
        o = run["metrics"]["official"]
        print(f"{run['variant']} seed {run['seed']}: image AUROC {o['image_auroc']:.3f}, pixel AUROC {o['pixel_auroc']:.3f}, "
              f"AU-PRO {o['aupro']:.3f}; train {run['train_seconds']:.0f}s", flush=True)

    for v in a.variants:
        for seed in a.seeds:
            out = Path(a.runs) / f"{kind}_{a.category}_{v}_e{a.epochs}_s{seed}"
            if a.rescore:
                old = next((r for r in res["runs"] if (r["variant"], r["seed"], r["epochs"]) == (v, seed, a.epochs)), {})
                train_s = old.get("train_seconds", float("nan"))
            else:
                cfg = get_config(a.preset, epochs=a.epochs, seed=seed, val_fraction=a.val_fraction, device="cpu", **VARIANTS[v])
                t0 = time.perf_counter()
                fit(root, a.category, out, cfg, progress=False, evaluate_test=False, overwrite=True, log=lambda *_: None)
                train_s = time.perf_counter() - t0
            det = load(out, device)
            cfg = det.config
            val = MVTecDataset(root, a.category, "val", cfg.input_size, val_fraction=cfg.val_fraction, seed=cfg.seed)
            stats = scale_stats(loglik(det.model, val)[0])
            test = MVTecDataset(root, a.category, "test", cfg.input_size)
            t0 = time.perf_counter()
            logps, truth = loglik(det.model, test)
            score_s = time.perf_counter() - t0
            record(dict(variant=v, seed=seed, epochs=a.epochs, config=cfg.to_dict(), run=str(out), train_seconds=train_s,
                        test_images_per_second=len(test) / score_s, scale_stats=stats,
                        metrics=evaluate(logps, truth, cfg.input_size, cfg.top_k, stats)))
    print()
    print(table(summarise(res["runs"]), ["variant", "epochs", "map", "seeds", "image_auroc", "pixel_auroc", "aupro"]))
    print(f"written {path}")


if __name__ == "__main__":
    main()
