"""What the sharper-map options of bench/sharper.py cost next to the accurate preset on the CPU, side by side.

    python bench/sharper_cost.py --threads 2

One model per variant (`bench/sharper.py`'s VARIANTS on top of `accurate`, which on square images is `lite`, at
256x256, random backbone weights: the arithmetic, not the quality, is timed): inference (batch 8, images to scores
and maps) and a training step from cached features (batch 8), interleaved in one process, median of the rounds, as
ratios to the base model. The budget of the sharper-maps work: training ≤ 1.5x accurate's, inference ≥ 0.6x lite's.
Written to bench/results/sharper_cost_cpu.json.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch

from common import environment, loadavg, median, table, write_result
from msflow.core import get_config
from msflow.model import MSFlow
from sharper import VARIANTS


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2); p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads); torch.manual_seed(0)
    res = dict(bench="sharper_cost", threads=a.threads, rounds=a.rounds, env=environment(torch.device("cpu")), rows=[])
    models = {k: MSFlow(get_config("accurate", weights="random", **v)).eval() for k, v in VARIANTS.items()}
    x = torch.rand(8, 3, 256, 256)
    feats = {k: [f.clone() for f in m.extract(x)] for k, m in models.items()}
    opts = {k: torch.optim.Adam(m.flow_parameters(), lr=1e-5) for k, m in models.items()}
    def infer(k):
        with torch.no_grad(): models[k].score_maps(x)
    def step(k):
        m = models[k]; m.train(); loss = m.loss(features=feats[k]); opts[k].zero_grad(); loss.backward(); opts[k].step(); m.eval()
    for k in VARIANTS: infer(k); step(k)  # warm-up
    t = {k: dict(infer=[], step=[]) for k in VARIANTS}
    for _ in range(a.rounds):
        for k in VARIANTS:
            t0 = time.perf_counter(); infer(k); t[k]["infer"].append(time.perf_counter() - t0)
            t0 = time.perf_counter(); step(k); t[k]["step"].append(time.perf_counter() - t0)
    rate = {k: {w: 8 / median(ts) for w, ts in t[k].items()} for k in VARIANTS}  # images/s
    base = rate["base"]
    for k, v in VARIANTS.items():
        m = models[k]
        res["rows"].append(dict(variant=k, options=v, flow_params=sum(p.numel() for p in m.flow_parameters()),
                                infer_img_s=round(rate[k]["infer"], 2), train_img_s=round(rate[k]["step"], 2),
                                infer_vs_base=round(rate[k]["infer"] / base["infer"], 2),
                                train_time_vs_base=round(base["step"] / rate[k]["step"], 2), raw=t[k]))
    print(table(res["rows"], ["variant", "flow_params", "infer_img_s", "train_img_s", "infer_vs_base", "train_time_vs_base"]))
    res["env"]["loadavg_end"] = loadavg()
    print(write_result("sharper_cost_cpu", res))


if __name__ == "__main__":
    main()
