"""msflow beside anomalib's FastFlow and CFLOW: same backbone, resolution, data and epoch budget.

Needs the `bench` extra (anomalib) in its own environment, so that msflow's own environment is untouched:

    python3 -m venv /work/benchvenv
    /work/benchvenv/bin/pip install -e . anomalib==2.7.0 torch==2.14.1 torchvision==0.29.1
    HF_HUB_OFFLINE=1 /work/benchvenv/bin/python bench/compare_anomalib.py --demo --category brick --epochs 10
    # the presets next to FastFlow and CFLOW on the strips, at the shape the accurate preset chooses
    HF_HUB_OFFLINE=1 /work/benchvenv/bin/python bench/compare_anomalib.py --strips --category brick --epochs 30 \
        --methods msflow msflow-accurate fastflow cflow --size-from accurate --cflow-epochs 3

The anomalib torch models are built directly (no Lightning engine): `FastflowModel` and `CflowModel`
with pre_trained=False, their backbone replaced by msflow's frozen `tf_efficientnet_lite0` with the
bundled ImageNet weights (un-pooled stage 1-3 features, images normalised the same way), and trained
with the optimisers and losses of anomalib's Lightning modules (FastFlow: Adam lr 1e-3, weight decay
1e-5; CFLOW: Adam lr 1e-4, fibre batches of 64, -logsigmoid loss). `msflow` is the lite preset,
`msflow-accurate` the accurate preset. With `--size-from accurate` every method works at the input shape
the accurate preset chooses from the training images (`keep_aspect_size`; on square images 256x256),
so FastFlow and CFLOW see the same pixels as it; `--cflow-epochs` gives CFLOW fewer passes (it costs
about 10 times FastFlow's time per pass on a CPU).
All three see the same training images (train/good minus the same 10 % validation split), in the
same number of passes of batch 8, and are scored on the same test images with the same metric code
(image AUROC on each model's own image score, pixel AUROC and AU-PRO on its own anomaly map).
Inference speed: image tensor in memory -> image score and anomaly map; data loading not included.
Writes bench/results/compare_anomalib_<category>_e<epochs>.json and prints tables.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common import PeakMemory, dev_data, environment, loadavg, median, sync, table, timeit, write_result
from msflow.core import get_config, get_device, seed_everything
from msflow.data import MVTecDataset, keep_aspect_size
from msflow.detector import score_dataset
from msflow.engine import fit
from msflow.extractor import FeatureExtractor
from msflow.metrics import aupro, image_auroc, pixel_auroc


def lite_backbone() -> FeatureExtractor:
    "tf_efficientnet_lite0 with the bundled ImageNet weights, stages 1-3, no pooling (what FastFlow/CFLOW consume)."
    return FeatureExtractor("tf_efficientnet_lite0", "bundled", (1, 2, 3), reflect_padding=False, pool="none")


def build_fastflow(size):
    from anomalib.models.image.fastflow import torch_model as ftm
    m = ftm.FastflowModel(input_size=size, backbone="resnet18", pre_trained=False)  # then swap in the same backbone
    fe = lite_backbone()
    dims = [[c, size[0] // s, size[1] // s] for c, s in zip(fe.channels, fe.strides)]
    m.feature_extractor = fe
    m.norms = nn.ModuleList([nn.LayerNorm(d, elementwise_affine=True) for d in dims])
    m.fast_flow_blocks = nn.ModuleList([ftm.create_fast_flow_block(input_dimensions=d, conv3x3_only=False, hidden_ratio=1.0,
                                                                   flow_steps=8) for d in dims])
    return m


class _DictBackbone(nn.Module):
    "msflow's extractor returning a dict by layer name, as anomalib's TimmFeatureExtractor does."
    def __init__(self, fe, names): super().__init__(); self.fe, self.names = fe, names
    def forward(self, x): return dict(zip(self.names, self.fe(x)))


def build_cflow():
    from anomalib.models.image.cflow import torch_model as ctm
    m = ctm.CflowModel(backbone="resnet18", layers=["layer1", "layer2", "layer3"], pre_trained=False)
    fe = lite_backbone()
    m.encoder = _DictBackbone(fe, m.pool_layers).eval()
    m.pool_dims = list(fe.channels)
    m.decoders = nn.ModuleList([ctm.cflow_head(condition_vector=m.condition_vector, coupling_blocks=8, clamp_alpha=1.9,
                                               n_features=c, permute_soft=False) for c in fe.channels])
    return m


def train_fastflow(m, images, epochs, bs, gen, log):
    from anomalib.models.image.fastflow.loss import FastflowLoss
    crit = FastflowLoss()
    params = [p for p in m.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-3, weight_decay=1e-5)
    m.train()
    for e in range(epochs):
        perm, tot = torch.randperm(len(images), generator=gen), 0.0
        for i in range(0, len(images), bs):
            h, j = m(images[perm[i:i + bs]])
            loss = crit(h, j); opt.zero_grad(); loss.backward(); opt.step(); tot += loss.item()
        log(f"  fastflow pass {e + 1}: loss {tot:.4g}")
    m.eval()


def train_cflow(m, images, epochs, bs, gen, log):
    from anomalib.models.image.cflow.utils import get_logp, positional_encoding_2d
    params = [p for d in m.decoders for p in d.parameters()]
    opt = torch.optim.Adam(params, lr=1e-4)
    m.decoders.train()
    for e in range(epochs):
        perm_img, tot = torch.randperm(len(images), generator=gen), 0.0
        for i in range(0, len(images), bs):
            with torch.no_grad(): act = m.encoder(images[perm_img[i:i + bs]])
            for li, layer in enumerate(m.pool_layers):
                a = act[layer].detach()
                b, c, h, w = a.shape
                n = b * h * w
                pos = positional_encoding_2d(m.condition_vector, h, w).unsqueeze(0).expand(b, -1, -1, -1)
                c_r = pos.permute(0, 2, 3, 1).reshape(n, -1)
                e_r = a.permute(0, 2, 3, 1).reshape(n, c)
                perm = torch.randperm(n, generator=gen)
                nfb = n // m.fiber_batch_size
                for k in range(nfb):
                    idx = perm[k * m.fiber_batch_size:(k + 1) * m.fiber_batch_size if k < nfb - 1 else n]
                    p_u, ljd = m.decoders[li](e_r[idx], [c_r[idx]])
                    loss = -F.logsigmoid(get_logp(c, p_u, ljd) / c)
                    opt.zero_grad(); loss.mean().backward(); opt.step(); tot += loss.sum().item()
        log(f"  cflow pass {e + 1}: loss {tot:.4g}")
    m.eval()


@torch.no_grad()
def anomalib_scores(m, test, bs=8):
    "Image scores and anomaly maps of an anomalib torch model over a test dataset."
    m.eval(); s, maps = [], []
    for i in range(0, len(test), bs):
        x = torch.stack([test[j]["image"] for j in range(i, min(i + bs, len(test)))])
        out = m(x)
        s.append(out.pred_score.reshape(-1).float()); maps.append(out.anomaly_map.reshape(len(x), *x.shape[-2:]).float())
    return torch.cat(s).numpy(), torch.cat(maps).numpy()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=None)
    p.add_argument("--demo", action="store_true")
    p.add_argument("--strips", action="store_true", help="the demo category as 160x400 strips (bench/quality.py --strips)")
    p.add_argument("--category", default="brick")
    p.add_argument("--size-from", choices=["lite", "accurate"], default="lite", help="input shape of every method: lite's 256x256, or the shape the accurate preset chooses")
    p.add_argument("--cflow-epochs", type=int, default=None, help="passes for CFLOW (default: --epochs)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=9826)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--methods", nargs="+", default=["msflow", "fastflow", "cflow"], choices=["msflow", "msflow-accurate", "fastflow", "cflow"])
    p.add_argument("--skip-quality", action="store_true", help="speed only")
    p.add_argument("--name", default=None, help="result file name (default compare_anomalib_<category>_e<epochs>, with _s<seed> unless the seed is 9826)")
    a = p.parse_args(argv)
    root, dataset = dev_data(a.category, a.demo, a.strips, a.data_root)
    name = a.name or (f"compare_anomalib_{a.category}_e{a.epochs}" if dataset != "strips" else f"compare_anomalib_strips_{a.category}_e{a.epochs}")
    if a.name is None and a.seed != 9826: name += f"_s{a.seed}"
    torch.set_num_threads(a.threads)
    device = get_device(a.device)
    import anomalib
    cfg = get_config("lite", epochs=a.epochs, seed=a.seed, val_fraction=0.1, device=str(device))
    acc = get_config("accurate", epochs=a.epochs, seed=a.seed, val_fraction=0.1, device=str(device))
    if a.size_from == "accurate":  # the shape accurate's fit will choose, from the same training images
        size = keep_aspect_size(MVTecDataset(root, a.category, "train", cfg.input_size, val_fraction=cfg.val_fraction, seed=cfg.seed).paths, acc.input_size)
    else: size = cfg.input_size
    env = environment(device); env["anomalib"] = anomalib.__version__
    res = dict(bench="compare_anomalib", dataset=dataset, category=a.category, epochs=a.epochs, seed=a.seed,
               cflow_epochs=a.cflow_epochs or a.epochs, input_size=list(size), size_from=a.size_from, accurate=acc.to_dict(), batch_size=cfg.batch_size, backbone="tf_efficientnet_lite0 (bundled ImageNet weights)",
               env=env, data_loading_included=False, quality={}, speed=[])
    log = lambda *x: print(*x, flush=True)
    train = MVTecDataset(root, a.category, "train", size, val_fraction=cfg.val_fraction, seed=cfg.seed)
    test = MVTecDataset(root, a.category, "test", size)
    images = torch.stack([train[i]["image"] for i in range(len(train))]).to(device)
    labels = np.array([test[i]["label"] for i in range(len(test))])
    masks = np.stack([test[i]["mask"][0].numpy() > 0.5 for i in range(len(test))])
    log(f"compare: {a.category}, {len(train)} train / {len(test)} test images at {size}, {a.epochs} passes, load {env['loadavg_start']}")
    from common import RESULTS
    old = RESULTS / f"{name}.json"
    if old.exists() and not a.skip_quality:  # a rerun adds or replaces its methods; the others' results stay
        prev = json.loads(old.read_text())
        if all(prev.get(k) == res[k] for k in ("dataset", "category", "epochs", "input_size", "seed")):
            res["quality"] = {k: v for k, v in prev.get("quality", {}).items() if k not in a.methods}
            res["speed"] = [r for r in prev.get("speed", []) if r["method"] not in a.methods]
            res["earlier_env"] = prev.get("env")
            if "cflow" not in a.methods and "cflow" in res["quality"]: res["cflow_epochs"] = prev.get("cflow_epochs", res["cflow_epochs"])

    models = {}
    for meth in a.methods:
        seed_everything(a.seed); gen = torch.Generator().manual_seed(a.seed)
        t0 = time.perf_counter()
        mcfg = acc if meth == "msflow-accurate" else cfg
        if meth.startswith("msflow") and a.skip_quality:
            from msflow.model import MSFlow
            m = MSFlow(mcfg.replace(input_size=size, aspect="square") if meth == "msflow-accurate" else mcfg).to(device).eval()
        elif meth.startswith("msflow"):
            det, _ = fit(root, a.category, None, mcfg, progress=False, evaluate_test=False, log=lambda *_: None)
            m = det.model
        elif meth == "fastflow":
            m = build_fastflow(size).to(device)
            if not a.skip_quality: train_fastflow(m, images, a.epochs, cfg.batch_size, gen, log)
        else:
            m = build_cflow().to(device)
            if not a.skip_quality: train_cflow(m, images, a.cflow_epochs or a.epochs, cfg.batch_size, gen, log)
        train_s = time.perf_counter() - t0
        models[meth] = m
        n_params = sum(p.numel() for p in m.parameters() if p.requires_grad)
        q = dict(train_seconds=train_s, trainable_parameters=n_params, passes=(a.cflow_epochs or a.epochs) if meth == "cflow" else a.epochs)
        if meth.startswith("msflow"): q["config"] = mcfg.to_dict()
        if not a.skip_quality:
            if meth.startswith("msflow"):
                sc = score_dataset(m, MVTecDataset(root, a.category, "test", det.input_size), mcfg, progress=False)
                q.update(image_auroc=image_auroc(sc.labels, sc.scores), pixel_auroc=pixel_auroc(sc.masks, sc.add),
                         aupro=aupro(sc.masks, sc.mul), maps="image/PRO: mul, pixel: add (official pairing)")
            else:
                s, maps = anomalib_scores(m, test)
                q.update(image_auroc=image_auroc(labels, s), pixel_auroc=pixel_auroc(masks, maps), aupro=aupro(masks, maps),
                         maps="anomalib's own score and map")
        res["quality"][meth] = q
        log(f"{meth}: {q}")
        write_result(name, res)

    # inference speed, side by side: for each batch size the three models are timed in turn
    for b in a.batches:
        x = torch.rand(b, 3, *size, device=device)
        for meth, m in models.items():
            m.eval()
            fn = (lambda: m.score_maps(x)) if meth.startswith("msflow") else (lambda: m(x))
            with torch.no_grad(), PeakMemory(device) as mem:
                ts = timeit(fn, device, reps=a.reps)
            t = median(ts)
            res["speed"].append(dict(method=meth, batch=b, seconds=t, latency_ms=1000 * t, images_per_s=b / t, raw=ts, **mem.as_dict()))
            log(res["speed"][-1])
        write_result(name, res)
    env["loadavg_end"] = loadavg()
    path = write_result(name, res)
    print()
    if not a.skip_quality:
        print(table([dict(method=k, **v) for k, v in res["quality"].items()],
                    ["method", "image_auroc", "pixel_auroc", "aupro", "train_seconds", "trainable_parameters"]))
    print(table(res["speed"], ["method", "batch", "latency_ms", "images_per_s", "peak_mib"]))
    print(f"written {path}")


if __name__ == "__main__":
    main()
