"""Speed and memory of msflow: feature extraction, flow training from the feature cache vs recomputing
the backbone at every step, and inference (image -> score and maps) at several batch sizes.

    python bench/speed.py --preset lite                       # CPU, 2 threads, 256²
    python bench/speed.py --preset paper --random-weights --n-train 8 --batches 1 8 --reps 1
    python bench/speed.py --preset lite --device cuda         # on a GPU
    python bench/speed.py --preset lite --amp bf16            # bf16 autocast (CPUs with AMX / AVX-512 BF16, GPUs)
    python bench/speed.py --preset lite --layouts             # + channels-last vs plain layout, side by side
    python bench/speed.py --preset lite --fold                # + BatchNorm folded vs plain backbone, side by side
    python bench/speed.py --preset lite --maps                # + map upsampling by matrix products vs F.interpolate
    python bench/speed.py --preset lite --against ../prev --skip-basics   # this msflow against another checkout, side by side
    python bench/speed.py --preset lite --split-merge --skip-basics       # coupling split/merge: nflows indexing vs slices

Images are random tensors already in memory: data loading and decoding are NOT included, except in
the row `extract_with_loading`, which reads, decodes and resizes real files when --data-root is given.
Writes bench/results/speed_<preset>_<device>.json and prints a table.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np
import torch

from common import PeakMemory, environment, loadavg, median, sync, table, timeit, write_result
from msflow.core import autocast_dtype, get_config, get_device, seed_everything
from msflow.train import FeatureCache, train_flows
from msflow.model import MSFlow


def import_other(path):
    "The msflow package of another checkout, imported under the name `msflow_other` (its modules import each other relatively)."
    import importlib.util
    pkg = os.path.join(os.path.abspath(path), "msflow")
    spec = importlib.util.spec_from_file_location("msflow_other", os.path.join(pkg, "__init__.py"), submodule_search_locations=[pkg])
    mod = importlib.util.module_from_spec(spec); sys.modules["msflow_other"] = mod; spec.loader.exec_module(mod)
    import importlib
    for sub in ("core", "model", "train"): setattr(mod, sub, importlib.import_module(f"msflow_other.{sub}"))
    return mod


def git_commit(path) -> str:
    "The commit checked out at `path`, with '+changes' when the working tree differs from it."
    import subprocess
    run = lambda *c: subprocess.run(["git", "-C", path, *c], capture_output=True, text=True).stdout.strip()
    return run("rev-parse", "HEAD") + ("+changes" if run("status", "--porcelain", "--", "msflow") else "")


class Images(torch.utils.data.Dataset):
    "Random images held in memory (no decoding): item dict(image=(3,H,W) in [0,1])."
    def __init__(self, n, size, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.rand(n, 3, *size, generator=g)
    def __len__(self): return len(self.x)
    def __getitem__(self, i): return dict(image=self.x[i])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="lite", choices=["lite", "paper"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--random-weights", action="store_true", help="random backbone weights (speed does not depend on them)")
    p.add_argument("--input-size", type=int, default=None, help="default: the preset's")
    p.add_argument("--n-train", type=int, default=64, help="images in the training pass (cache vs recompute)")
    p.add_argument("--train-reps", type=int, default=2, help="interleaved repetitions of (cache pass, recompute pass)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32], help="inference batch sizes")
    p.add_argument("--reps", type=int, default=3, help="timed repetitions per inference batch size (median reported)")
    p.add_argument("--data-root", default=None, help="also time extraction with data loading from real files")
    p.add_argument("--category", default="magnetic_tile")
    p.add_argument("--name", default=None, help="result file name (default speed_<preset>_<device>[_<amp>])")
    p.add_argument("--amp", default="off", choices=["off", "bf16", "fp16"], help="mixed precision of the flows")
    p.add_argument("--backbone-amp", action="store_true", help="run the backbone under --amp too")
    p.add_argument("--compile", action="store_true", help="torch.compile the flows (training) and the model (inference); "
                   "the first call of each shape compiles, so use --train-reps 3 and --reps 3 or more (medians are reported)")
    p.add_argument("--layouts", action="store_true", help="also time inference (batch 8) and a training pass with the model "
                   "in the plain (NCHW) layout against channels-last, interleaved")
    p.add_argument("--fold", action="store_true", help="also time extraction and inference (batch 8) with the backbone's "
                   "BatchNorm folded into its convolutions (the default) against the plain backbone, interleaved")
    p.add_argument("--against", default=None, metavar="DIR",
                   help="also time a training pass and inference (batch 8) of the msflow in the checkout DIR (e.g. the previous "
                        "commit, `git worktree add DIR COMMIT`) against this one: same weights, interleaved, in this process")
    p.add_argument("--split-merge", action="store_true",
                   help="also time a training pass and inference (batch 8) with the coupling's split and merge done by nflows' "
                        "generic channel indexing against msflow's contiguous slices, interleaved")
    p.add_argument("--skip-basics", action="store_true", help="skip the extraction, training and inference rows (only the side-by-side comparisons asked for)")
    p.add_argument("--maps", action="store_true", help="also time the anomaly maps (batch 8) with upsampling by matrix "
                   "products (the default) against F.interpolate, interleaved")
    a = p.parse_args(argv)

    torch.set_num_threads(a.threads)
    device = get_device(a.device)
    over = dict(device=str(device), amp=a.amp, compile=a.compile, backbone_amp=a.backbone_amp)
    if a.random_weights: over["weights"] = "random"
    if a.input_size: over["input_size"] = a.input_size
    cfg = get_config(a.preset, **over)
    H, W = cfg.input_size
    seed_everything(0)
    model = MSFlow(cfg).to(device).eval()
    env = environment(device)
    res = dict(bench="speed", preset=a.preset, config=cfg.to_dict(), env=env, data_loading_included=False,
               n_train=a.n_train, rows=[])
    rows = res["rows"]
    print(f"msflow speed: {a.preset} at {H}x{W} on {device} ({env['cpu']}, {env['cpu_cores']} cores, "
          f"{torch.get_num_threads()} threads), load {env['loadavg_start']}", flush=True)

    tcfg, bs = cfg.replace(epochs=1), cfg.batch_size
    amp = lambda: torch.autocast(device.type, dtype=autocast_dtype(a.amp, device), enabled=a.amp != "off")
    if not a.skip_basics:
        # 1. feature extraction (backbone + pooling), batch = training batch size, images in memory
        bs = cfg.batch_size
        x = torch.rand(bs, 3, H, W, device=device)
        def extract():
            with amp(): model.extract(x)
        with PeakMemory(device) as mem:
            ts = timeit(extract, device, reps=max(1, a.reps))
        rows.append(dict(what="extract", batch=bs, seconds=median(ts), images_per_s=bs / median(ts), **mem.as_dict()))
        print(rows[-1], flush=True)

        # 1b. extraction with data loading (real files: read, decode, resize), via FeatureCache.build
        if a.data_root:
            from msflow.data import MVTecDataset
            ds = MVTecDataset(a.data_root, a.category, "train", cfg.input_size)
            sub = torch.utils.data.Subset(ds, range(min(a.n_train, len(ds))))
            t0 = time.perf_counter()
            c = FeatureCache.build(model, sub, bs, device, progress=False); sync(device)
            t = time.perf_counter() - t0; c.close()
            rows.append(dict(what="extract_with_loading", batch=bs, seconds=t, images_per_s=len(sub) / t, data_loading_included=True))
            print(rows[-1], flush=True)

        # 2. flow training: one pass over n_train images from the cache vs recomputing the backbone each step.
        #    In-memory images isolate the backbone's cost; with --data-root a third variant also reads and
        #    decodes the files at every step, as a training loop without a cache does.
        ds = Images(a.n_train, (H, W))
        files = None
        if a.data_root:
            from msflow.data import MVTecDataset
            full = MVTecDataset(a.data_root, a.category, "train", cfg.input_size)
            files = torch.utils.data.Subset(full, range(min(a.n_train, len(full))))
        tcfg = cfg.replace(epochs=1)
        t = dict(build=[], cache=[], recompute=[], recompute_files=[])
        mem = {}
        for r in range(a.train_reps):
            seed_everything(r)
            t0 = time.perf_counter()
            cache = FeatureCache.build(model, ds, bs, device, progress=False); sync(device)
            t["build"].append(time.perf_counter() - t0)
            with PeakMemory(device) as mem["cache"]:
                t["cache"].append(train_flows(model, tcfg, cache, progress=False).seconds)
            cache.close(); del cache
            with PeakMemory(device) as mem["recompute"]:
                t["recompute"].append(train_flows(model, tcfg, dataset=ds, recompute=True, progress=False).seconds)
            if files is not None:
                with PeakMemory(device) as mem["recompute_files"]:
                    t["recompute_files"].append(train_flows(model, tcfg, dataset=files, recompute=True, progress=False).seconds)
            print(f"  rep {r}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in t.items() if v), flush=True)
        n = a.n_train
        tb, tc, tr = median(t["build"]), median(t["cache"]), median(t["recompute"])
        rows.append(dict(what="train_from_cache", batch=bs, seconds=tc, images_per_s=n / tc, **mem["cache"].as_dict()))
        rows.append(dict(what="train_recompute", batch=bs, seconds=tr, images_per_s=n / tr, **mem["recompute"].as_dict()))
        res["training"] = dict(images=n, build_seconds=tb, cache_pass_seconds=tc, recompute_pass_seconds=tr,
                               per_pass_speedup=tr / tc, raw=t,
                               # whole runs: the cache is built once, then every pass reads it
                               run_speedup={str(E): E * tr / (tb + E * tc) for E in (1, 10, 30, 100)})
        if files is not None:
            tf = median(t["recompute_files"])
            rows.append(dict(what="train_recompute_files", batch=bs, seconds=tf, images_per_s=n / tf, data_loading_included=True,
                             **mem["recompute_files"].as_dict()))
            res["training"].update(recompute_files_pass_seconds=tf, per_pass_speedup_files=tf / tc)
        for r_ in rows[-3:]: print(r_, flush=True)

        # 3. inference: images -> image score, mul map and add map at the input size
        model.eval()
        score_maps = torch.compile(model.score_maps, dynamic=False) if a.compile else model.score_maps
        for b in a.batches:
            x = torch.rand(b, 3, H, W, device=device)
            def infer():
                with amp(): score_maps(x)
            with torch.no_grad(), PeakMemory(device) as mem:
                ts = timeit(infer, device, reps=a.reps)
            t = median(ts)
            rows.append(dict(what="inference", batch=b, seconds=t, latency_ms=1000 * t, images_per_s=b / t, **mem.as_dict()))
            print(rows[-1], flush=True)
            del x
    # 4. memory layout: the same model in NCHW against channels-last (msflow's default), interleaved
    if a.layouts:
        import copy
        x = torch.rand(8, 3, H, W, device=device)
        cache = FeatureCache.build(model, Images(a.n_train, (H, W)), bs, device, progress=False)
        lay = dict(plain=dict(infer=[], train=[]), channels_last=dict(infer=[], train=[]))
        models = dict(plain=copy.deepcopy(model).set_memory_format(torch.contiguous_format), channels_last=model)
        for r in range(max(2, a.reps)):
            for name, m in models.items():
                m.eval()
                with torch.no_grad(), amp():
                    lay[name]["infer"] += timeit(lambda: m.score_maps(x), device, reps=1)
                lay[name]["train"].append(train_flows(m, tcfg, cache, progress=False).seconds)
        cache.close()
        res["layouts"] = {k: dict(inference_images_per_s=8 / median(v["infer"]), train_pass_seconds=median(v["train"]), raw=v)
                          for k, v in lay.items()}
        res["layouts"]["speedup"] = dict(inference=median(lay["plain"]["infer"]) / median(lay["channels_last"]["infer"]),
                                         training=median(lay["plain"]["train"]) / median(lay["channels_last"]["train"]))
        print("layouts:", {k: v for k, v in res["layouts"].items()}, flush=True)
    # 5. BatchNorm folded into the backbone's convolutions (msflow's default) against the plain backbone, interleaved
    if a.fold:
        x = torch.rand(8, 3, H, W, device=device)
        fold = dict(plain=dict(extract=[], infer=[]), folded=dict(extract=[], infer=[]))
        model.eval()
        for r in range(max(3, a.reps)):
            for name, on in (("plain", False), ("folded", True)):
                model.extractor.fold_bn = on
                with torch.no_grad(), amp():
                    fold[name]["extract"] += timeit(lambda: model.extract(x), device, reps=1)
                    fold[name]["infer"] += timeit(lambda: model.score_maps(x), device, reps=1)
        model.extractor.fold_bn = True
        res["fold_bn"] = {k: dict(extract_images_per_s=8 / median(v["extract"]), inference_images_per_s=8 / median(v["infer"]), raw=v)
                          for k, v in fold.items()}
        res["fold_bn"]["speedup"] = {w: median(fold["plain"][w]) / median(fold["folded"][w]) for w in ("extract", "infer")}
        print("fold_bn:", {k: {kk: vv for kk, vv in v.items() if kk != "raw"} for k, v in res["fold_bn"].items()}, flush=True)
    # 6. anomaly maps: upsampling by two matrix products (the default) against F.interpolate, interleaved
    if a.maps:
        import msflow.anomaly_map as am
        mm_up = am._up
        def interp_up(x, size):
            if x.dtype in (torch.float16, torch.bfloat16): x = x.float()
            return torch.nn.functional.interpolate(x[:, None], size=am._size2(size), mode="bilinear", align_corners=True)[:, 0]
        x = torch.rand(8, 3, H, W, device=device)
        model.eval()
        with torch.no_grad(), amp(): logps = [l.float() for l in model.log_likelihoods(x)]
        def maps(): am.image_score(am.mul_map(logps, (H, W))); am.add_map(logps, (H, W))
        mp = dict(interpolate=dict(maps=[], infer=[]), matmul=dict(maps=[], infer=[]))
        for r in range(max(3, a.reps)):
            for name, up in (("interpolate", interp_up), ("matmul", mm_up)):
                am._up = up
                with torch.no_grad(), amp():
                    mp[name]["maps"] += timeit(maps, device, reps=3)
                    mp[name]["infer"] += timeit(lambda: model.score_maps(x), device, reps=1)
        am._up = mm_up
        res["maps"] = {k: dict(maps_ms_per_batch8=1000 * median(v["maps"]), inference_images_per_s=8 / median(v["infer"]), raw=v)
                       for k, v in mp.items()}
        res["maps"]["speedup"] = {w: median(mp["interpolate"][w]) / median(mp["matmul"][w]) for w in ("maps", "infer")}
        print("maps:", {k: {kk: vv for kk, vv in v.items() if kk != "raw"} for k, v in res["maps"].items()}, flush=True)
    # 7. this msflow against the one in another checkout (same weights, same cached features), interleaved
    if a.against:
        other = import_other(a.against)
        seed_everything(0)
        om = other.model.MSFlow(other.core.get_config(a.preset, **over)).to(device)
        model.load_state_dict(om.state_dict())  # older state dicts load into this version (renamed where needed)
        imgs = Images(a.n_train, (H, W))
        caches = dict(this=FeatureCache.build(model, imgs, bs, device, progress=False),
                      other=other.train.FeatureCache.build(om, imgs, bs, device, progress=False))
        fns = dict(this=(model, train_flows), other=(om, other.train.train_flows))
        x = torch.rand(8, 3, H, W, device=device)
        vs = dict(this=dict(train=[], infer=[]), other=dict(train=[], infer=[]))
        for r in range(max(3, a.train_reps)):
            for name, (m, tf) in (fns.items() if r % 2 == 0 else reversed(fns.items())):
                vs[name]["train"].append(tf(m, tcfg, caches[name], progress=False).seconds)
                m.eval()
                with torch.no_grad(), amp():
                    vs[name]["infer"] += timeit(lambda: m.score_maps(x), device, reps=a.reps)
        for c in caches.values(): c.close()
        res["against"] = dict(other_path=os.path.abspath(a.against), other_commit=git_commit(a.against), this_commit=git_commit("."),
                              **{k: dict(train_pass_seconds=median(v["train"]), inference_images_per_s=8 / median(v["infer"]), raw=v)
                                 for k, v in vs.items()})
        res["against"]["ratio_this_over_other"] = dict(
            train_pass_seconds=median(vs["this"]["train"]) / median(vs["other"]["train"]),
            inference_seconds=median(vs["this"]["infer"]) / median(vs["other"]["infer"]))
        print("against:", {k: v for k, v in res["against"].items() if k not in ("this", "other")} | {k: {kk: vv for kk, vv in res["against"][k].items() if kk != "raw"} for k in ("this", "other")}, flush=True)
    # 8. the coupling's split and merge: nflows' generic index gather/scatter against contiguous slices (the default)
    if a.split_merge:
        from nflows.transforms.coupling import CouplingTransform
        from msflow.flows import MSFlowCoupling
        ours = MSFlowCoupling.forward, MSFlowCoupling.inverse
        imgs = Images(a.n_train, (H, W))
        cache = FeatureCache.build(model, imgs, bs, device, progress=False)
        x = torch.rand(8, 3, H, W, device=device)
        sm = dict(nflows=dict(train=[], infer=[]), slices=dict(train=[], infer=[]))
        for r in range(max(3, a.train_reps)):
            for name in (("nflows", "slices") if r % 2 == 0 else ("slices", "nflows")):
                MSFlowCoupling.forward, MSFlowCoupling.inverse = ours if name == "slices" else (CouplingTransform.forward, CouplingTransform.inverse)
                sm[name]["train"].append(train_flows(model, tcfg, cache, progress=False).seconds)
                model.eval()
                with torch.no_grad(), amp():
                    sm[name]["infer"] += timeit(lambda: model.score_maps(x), device, reps=a.reps)
        MSFlowCoupling.forward, MSFlowCoupling.inverse = ours
        cache.close()
        res["split_merge"] = {k: dict(train_pass_seconds=median(v["train"]), inference_images_per_s=8 / median(v["infer"]), raw=v)
                              for k, v in sm.items()}
        res["split_merge"]["speedup_of_slices"] = {w: median(sm["nflows"][w]) / median(sm["slices"][w]) for w in ("train", "infer")}
        print("split_merge:", res["split_merge"]["speedup_of_slices"], flush=True)
    env["loadavg_end"] = loadavg()
    path = write_result(a.name or f"speed_{a.preset}_{device.type}" + ("" if a.amp == "off" else f"_{a.amp}")
                        + ("_backbone" if a.backbone_amp else "") + ("_compiled" if a.compile else ""), res)
    print()
    print(table(rows, ["what", "batch", "seconds", "images_per_s", "peak_mib", "above_start_mib"]))
    tr_ = res.get("training")
    if tr_ is None: print(f"written {path}"); return
    if "per_pass_speedup_files" in tr_: print(f"\nvs recomputing and reading the files every step: {tr_['per_pass_speedup_files']:.1f}x")
    print(f"training pass from the cache is {tr_['per_pass_speedup']:.1f}x faster than recomputing features "
          f"(whole 100-pass run incl. building the cache: {tr_['run_speedup']['100']:.1f}x)")
    print(f"written {path}")


if __name__ == "__main__":
    main()
