"""How close the flows built from nflows' parts come to the hand-written flows of e67e97e, for the same weights.

    python bench/flows_parity.py

Reads the reference that `tests/fixtures/make_flows_reference.py` wrote at e67e97e (a head with random weights; a
run trained and saved by that version) and reports, for every quantity the tests compare, the largest difference
divided by the reference's largest magnitude (float32). The tests require at most 1e-5.
Written to bench/results/flows_parity.json.
"""
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np
import torch

from common import environment, write_result
from msflow.anomaly_map import score_maps
from msflow.core import MSFlowConfig
from msflow.detector import Detector
from msflow.loss import log_likelihoods, msflow_loss, nll_per_sample
from msflow.model import FlowHead

FIX = Path(__file__).resolve().parents[1] / "tests" / "fixtures"


def rel(a, b) -> float:
    "Largest |a - b| over the reference's largest magnitude (lists: the worst item)."
    if isinstance(b, (list, tuple)): return max(rel(x, y) for x, y in zip(a, b))
    a, b = (torch.as_tensor(np.asarray(v)) if not torch.is_tensor(v) else v for v in (a, b))
    return float((a.double() - b.double()).abs().max() / max(b.double().abs().max().item(), 1e-30))


def main():
    ref = torch.load(FIX / "flows_reference.pt", weights_only=False)
    r = ref["random"]; cfg = MSFlowConfig.from_dict(r["config"])
    head = FlowHead(r["channels"], cfg, torch.Generator().manual_seed(cfg.seed)).eval()
    head.load_state_dict(r["state_dict"])
    with torch.no_grad(): zs, logdet = head(r["features"]); xs, inv = head.inverse(zs)
    logps = log_likelihoods(zs); maps = score_maps(logps, (48, 64), 0.03)
    random = dict(latents=rel(zs, r["zs"]), logdet=rel(logdet, r["logdet"]), inverse=rel(xs, r["inverse"]),
                  inverse_logdet=rel(inv, r["inverse_logdet"]), log_likelihoods=rel(logps, r["logps"]),
                  nll=rel(nll_per_sample(zs, logdet), r["nll"]), loss=rel(msflow_loss(zs, logdet), r["loss"]),
                  **{f"map_{k}": rel(maps[k], r["maps"][k]) for k in ("score", "raw_score", "mul", "raw", "add")})
    t = ref["trained"]; det = Detector.load(FIX / t["run"]); out = det.score_images(t["images"])
    with torch.no_grad():
        feats = det.model.extract(torch.from_numpy(t["images"]).permute(0, 3, 1, 2).float() / 255)
        zs, logdet = det.model.flow(feats)
    trained = dict(latents=rel(zs, t["zs"]), logdet=rel(logdet, t["logdet"]),
                   **{f"map_{k}": rel(out[k], t["scores"][k]) for k in ("score", "raw_score", "mul", "raw", "add")})
    res = dict(bench="flows_parity", reference_commit=ref["commit"], random_weights=random, saved_run=trained,
               env=environment(torch.device("cpu")))
    for name in ("random_weights", "saved_run"):
        print(name + ":", ", ".join(f"{k} {v:.1e}" for k, v in res[name].items()))
    print(write_result("flows_parity", res))


if __name__ == "__main__":
    main()
