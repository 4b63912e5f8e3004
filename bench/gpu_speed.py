"""GPU speed and mixed-precision check of the paper preset (random weights are fine for speed).

Measures, on one CUDA GPU, for the paper preset at 512x512 (and the lite preset at 256x256):
  * inference throughput, image tensor on the GPU -> image score + add map + mul map, batch 32,
    in fp32 and under bf16 autocast, channels_last;
  * flow training throughput from cached features (forward, backward, clip, Adam step), batch 32 and 8;
  * whether bf16 scores agree with fp32 scores: Spearman rank correlation of image scores and
    Pearson correlation of pixel maps on synthetic images after a short fp32 training.
  * optionally (--compile) the same inference and training steps through torch.compile, side by side
    with the eager rows of the same run, and a check that compiled scores match eager ones.
Data loading is not included. Results are written after every row, so a run stopped early keeps them.
Usage: python bench/gpu_speed.py [--out results.json] [--quick] [--compile] [--presets paper,lite]
"""
import argparse, json, math, time

import numpy as np
import torch

from msflow.anomaly_map import add_map, image_score, mul_map
from msflow.loss import msflow_loss
from msflow.model import MSFlow


DEV = torch.device("cuda")


def sync():
    if DEV.type == "cuda": torch.cuda.synchronize()


def timeit(fn, n, warmup=3):
    for _ in range(warmup): fn()
    sync(); t0 = time.perf_counter()
    for _ in range(n): fn()
    sync(); return (time.perf_counter() - t0) / n


def infer_fn(model, x, dtype):
    def f():
        with torch.no_grad(), torch.autocast(DEV.type, dtype=dtype, enabled=dtype is not None):
            logps = [l.float() for l in model.log_likelihoods(x)]
        size = x.shape[-2:]
        m = mul_map(logps, size)
        return image_score(m, model.config.top_k), m, add_map(logps, size)
    return f


def train_fn(model, feats, dtype, opt, params):
    def f():
        with torch.autocast(DEV.type, dtype=dtype, enabled=dtype is not None):
            zs, logdet = model.flow(feats)
        loss = msflow_loss([z.float() for z in zs], logdet.float())
        opt.zero_grad(set_to_none=True); loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 2.0); opt.step()
    return f


def synthetic_images(n, size, seed, defect):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size // 16, size // 16, generator=g)
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False) * 0.5 + 0.25
    if defect:
        for i in range(n):
            r, c = torch.randint(0, size - size // 8, (2,), generator=g).tolist()
            x[i, :, r:r + size // 8, c:c + size // 16] = 1.0
    return x


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="gpu_results.json"); ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", default="cuda"); ap.add_argument("--smoke", action="store_true", help="tiny sizes, to check the script on a CPU")
    ap.add_argument("--compile", action="store_true", help="add torch.compile rows (bf16) next to the eager ones")
    ap.add_argument("--compile-mode", default="default", help="torch.compile mode for compiled inference")
    ap.add_argument("--train-compile-mode", default="reduce-overhead", help="torch.compile mode for compiled training (CUDA graphs pay at small batches)")
    ap.add_argument("--train-compile-batch", type=int, default=8, help="batch size of the compiled training row")
    ap.add_argument("--presets", default="paper,lite", help="comma-separated presets to measure")
    ap.add_argument("--no-train", action="store_true", help="inference rows and the bf16 check only")
    ap.add_argument("--backbone-amp", action="store_true", help="bf16 rows run the backbone in bf16 too (default: flows only, "
                    "as msflow does unless backbone_amp=True)")
    ap.add_argument("--infer-batches", default="32", help="comma-separated inference batch sizes")
    a = ap.parse_args()
    global DEV
    DEV = dev = torch.device(a.device)
    torch.backends.cudnn.benchmark = True
    res = dict(gpu=torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu", torch=torch.__version__, rows=[],
               backbone_under_autocast=a.backbone_amp)
    reps = 3 if a.quick else 10
    sizes = dict(paper=512, lite=256)
    presets = (("lite", 64),) if a.smoke else tuple((p, sizes[p]) for p in a.presets.split(","))
    save = lambda: json.dump(res, open(a.out, "w"), indent=2)
    for preset, size in presets:
        torch.manual_seed(0)
        model = MSFlow.from_preset(preset, pretrained=False, device=a.device, input_size=size, backbone_amp=a.backbone_amp).to(dev).eval()
        model = model.to(memory_format=torch.channels_last)
        params = [p for p in model.parameters() if p.requires_grad]
        for bs in ((2,) if a.smoke else tuple(int(b) for b in a.infer_batches.split(","))):
            x = torch.rand(bs, 3, size, size, device=dev).contiguous(memory_format=torch.channels_last)
            for name, dt in (("fp32", None), ("bf16", torch.bfloat16)):
                t = timeit(infer_fn(model, x, dt), reps)
                res["rows"].append(dict(preset=preset, size=size, what="inference", batch=bs, precision=name, images_per_s=bs / t))
                print(res["rows"][-1], flush=True); save()
            if a.compile and bs == (2 if a.smoke else 32):
                try:
                    t0 = time.perf_counter()
                    eager = infer_fn(model, x, torch.bfloat16)
                    comp = torch.compile(eager, mode=a.compile_mode)
                    s_c, m_c, _ = comp(); sync(); ctime = time.perf_counter() - t0
                    s_e, m_e, _ = eager()
                    from scipy.stats import spearmanr
                    t = timeit(comp, reps)
                    res["rows"].append(dict(preset=preset, size=size, what="inference", batch=bs, precision="bf16",
                                            compiled=a.compile_mode, compile_seconds=ctime, images_per_s=bs / t,
                                            spearman_vs_eager=float(spearmanr(s_c.float().cpu(), s_e.float().cpu())[0]),
                                            max_abs_map_diff_vs_eager=float((m_c - m_e).abs().max())))
                except Exception as e:  # keep the eager rows
                    res["rows"].append(dict(preset=preset, what="inference compiled", error=repr(e)[:500]))
                print(res["rows"][-1], flush=True); save()
        if dev.type == "cuda": torch.cuda.reset_peak_memory_stats()
        for bs in (() if a.no_train else (2,) if a.smoke else (32, 8)):
            with torch.no_grad():
                feats = model.extract(torch.rand(bs, 3, size, size, device=dev))
            for name, dt in (("fp32", None), ("bf16", torch.bfloat16)):
                model.train(); opt = torch.optim.Adam(params, lr=1e-5)
                t = timeit(train_fn(model, feats, dt, opt, params), reps)
                res["rows"].append(dict(preset=preset, size=size, what="train from cache", batch=bs, precision=name, images_per_s=bs / t,
                                        peak_gib=torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else None))
                print(res["rows"][-1], flush=True); save()
            if a.compile and bs == (2 if a.smoke else a.train_compile_batch):
                try:
                    model.train(); opt = torch.optim.Adam(params, lr=1e-5, fused=True)
                    flow_c = torch.compile(model.flow, mode=a.train_compile_mode)
                    def step_c():
                        with torch.autocast(DEV.type, dtype=torch.bfloat16):
                            zs, logdet = flow_c(feats)
                        loss = msflow_loss([z.float() for z in zs], logdet.float())
                        opt.zero_grad(set_to_none=True); loss.backward()
                        torch.nn.utils.clip_grad_norm_(params, 2.0); opt.step()
                    t0 = time.perf_counter(); step_c(); sync(); ctime = time.perf_counter() - t0
                    t = timeit(step_c, reps)
                    res["rows"].append(dict(preset=preset, size=size, what="train from cache", batch=bs, precision="bf16",
                                            compiled=a.train_compile_mode, compile_seconds=ctime, images_per_s=bs / t))
                except Exception as e:
                    res["rows"].append(dict(preset=preset, what="train compiled", batch=bs, error=repr(e)[:500]))
                print(res["rows"][-1], flush=True); save()
        model.eval()
        # bf16 vs fp32 agreement after a short fp32 training on normal synthetic images
        if preset == presets[0][0]:
            normal = synthetic_images(32, size, 1, False).to(dev)
            with torch.no_grad(): feats = model.extract(normal)
            model.train(); opt = torch.optim.Adam(params, lr=1e-4)
            step = train_fn(model, feats, None, opt, params)
            for _ in range(2 if a.smoke else 10 if a.quick else 40): step()
            model.eval()
            test = torch.cat([synthetic_images(16, size, 2, False), synthetic_images(16, size, 3, True)]).to(dev)
            s32, m32, a32 = infer_fn(model, test, None)()
            s16, m16, a16 = infer_fn(model, test, torch.bfloat16)()
            from scipy.stats import spearmanr
            from sklearn.metrics import roc_auc_score
            labels = np.r_[np.zeros(16), np.ones(16)]
            agree = dict(spearman_scores=float(spearmanr(s32.cpu(), s16.cpu())[0]),
                         pearson_add_maps=float(np.corrcoef(a32.flatten().cpu(), a16.flatten().cpu())[0, 1]),
                         pearson_mul_maps=float(np.corrcoef(m32.flatten().cpu(), m16.flatten().cpu())[0, 1]),
                         auroc_fp32=float(roc_auc_score(labels, s32.cpu())), auroc_bf16=float(roc_auc_score(labels, s16.cpu())),
                         max_abs_score_diff=float((s32 - s16).abs().max()))
            res["bf16_vs_fp32"] = agree; print(agree, flush=True); save()
        del model
        if dev.type == "cuda": torch.cuda.empty_cache()
    save()
    print(f"\nGPU: {res['gpu']}, torch {res['torch']}")
    print(f"{'preset':7} {'size':>5} {'what':18} {'batch':>5} {'prec':5} {'img/s':>9}")
    for r in res["rows"]:
        if "error" in r: print(r); continue
        c = " compiled" if r.get("compiled") else ""
        print(f"{r['preset']:7} {r['size']:>5} {r['what']:18} {r['batch']:>5} {r['precision']:5} {r['images_per_s']:>9.1f}{c}")


if __name__ == "__main__":
    main()
