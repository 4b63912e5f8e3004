"""What the accurate preset costs next to lite on the CPU: the same model at the shapes `aspect="keep"` chooses.

    python bench/accurate_cost.py --threads 2

Inference (batch 8, images to scores and maps) and training steps from cached features (batch 8) are timed
for lite's 256x256 and the two shapes `aspect="keep"` chose on the development data (160x416 for the
160x400 strips, 288x224 for the Magnetic Tile images), with one flow head and with two (`heads=2`),
interleaved in one process (median of the rounds). Then a full `fit` on a generated category of 300
strips (`--fit-epochs` passes, building the feature cache included) runs in a child process for lite,
the aspect kept, and the aspect kept with two heads, for its wall time and peak resident memory.
Written to bench/results/accurate_cost_cpu.json.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np
import torch

from common import environment, loadavg, median, table, write_result
from msflow.core import get_config
from msflow.model import MSFlow

SHAPES = {"lite 256x256": ((256, 256), 1), "aspect kept 160x416 (strips)": ((160, 416), 1),
          "aspect kept 288x224 (Magnetic Tile)": ((288, 224), 1), "2 heads 256x256": ((256, 256), 2),
          "aspect kept, 2 heads 160x416 (strips)": ((160, 416), 2), "aspect kept, 2 heads 288x224 (Magnetic Tile)": ((288, 224), 2)}
FITS = {"lite": {}, "aspect kept": dict(aspect="keep", heads=1), "aspect kept, 2 heads": dict(aspect="keep", heads=2)}


def child_fit(name: str, root: str, epochs: int) -> dict:
    "Train lite with the options `FITS[name]` on the 300-strip category; wall time and peak RSS of this process."
    from msflow.engine import fit
    t0 = time.perf_counter()
    det, _ = fit(root, "brick", None, get_config("lite", epochs=epochs, **FITS[name]), progress=False, evaluate_test=False, log=lambda *a: None)
    return dict(model=name, input_size=list(det.input_size), epochs=epochs, seconds=time.perf_counter() - t0,
                peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2); p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--fit-epochs", type=int, default=10)
    p.add_argument("--child", nargs=2, metavar=("NAME", "ROOT"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.child: print(json.dumps(child_fit(*a.child, a.fit_epochs))); return
    res = dict(bench="accurate_cost", env=environment(torch.device("cpu")), rows=[], fit=[])
    models = {k: MSFlow(get_config("lite", input_size=s, heads=h)).eval() for k, (s, h) in SHAPES.items()}
    x = {k: torch.rand(8, 3, *s) for k, (s, h) in SHAPES.items()}
    feats = {k: [f.clone() for f in m.extract(x[k])] for k, m in models.items()}
    opts = {k: torch.optim.Adam(m.flow_parameters(), lr=1e-5) for k, m in models.items()}
    def infer(k):
        with torch.no_grad(): models[k].score_maps(x[k])
    def step(k):
        m = models[k]; m.train(); loss = m.loss(features=feats[k]); opts[k].zero_grad(); loss.backward(); opts[k].step(); m.eval()
    for k in SHAPES: infer(k); step(k)  # warm-up
    t = {k: dict(infer=[], step=[]) for k in SHAPES}
    for _ in range(a.rounds):
        for k in SHAPES:
            t0 = time.perf_counter(); infer(k); t[k]["infer"].append(time.perf_counter() - t0)
            t0 = time.perf_counter(); step(k); t[k]["step"].append(time.perf_counter() - t0)
    rate = {k: {w: 8 / median(ts) for w, ts in t[k].items()} for k in SHAPES}  # images/s
    lite = rate[next(iter(SHAPES))]
    for k, (s, h) in SHAPES.items():
        r = rate[k]
        res["rows"].append(dict(model=k, pixels=s[0] * s[1], heads=h, infer_img_s=round(r["infer"], 1), train_img_s=round(r["step"], 1),
                                infer_vs_lite=round(r["infer"] / lite["infer"], 2), train_vs_lite=round(r["step"] / lite["step"], 2)))
    print(table(res["rows"], ["model", "pixels", "heads", "infer_img_s", "train_img_s", "infer_vs_lite", "train_vs_lite"]))
    from msflow.demo_data import make_demo_dataset
    root = make_demo_dataset(Path(tempfile.gettempdir()) / "msflow-bench-strips300", "brick", n_train=300, n_test=6, size=400, height=160)
    for name in FITS:
        out = subprocess.run([sys.executable, __file__, "--threads", str(a.threads), "--fit-epochs", str(a.fit_epochs), "--child", name, str(root)],
                             capture_output=True, text=True, check=True)
        res["fit"].append(json.loads(out.stdout.strip().splitlines()[-1]))
    for r in res["fit"]: r["seconds_vs_lite"] = round(r["seconds"] / res["fit"][0]["seconds"], 2)
    print(table(res["fit"], ["model", "input_size", "epochs", "seconds", "seconds_vs_lite", "peak_rss_mib"]))
    res["env"]["loadavg_end"] = loadavg()
    print(write_result("accurate_cost_cpu", res))


if __name__ == "__main__":
    main()
