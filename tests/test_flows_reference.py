"""The flows built from nflows' parts give the numbers of the earlier hand-written flows, for the same weights.

`fixtures/flows_reference.pt` and `fixtures/run_e67e97e/` were written by `fixtures/make_flows_reference.py` at
commit e67e97e, the last version with hand-written coupling blocks: latents, log-determinants, inverses, maps and
scores of a head with random weights, and a run trained and saved by that version with its scores of four images.
Everything is float32; "equal" means a largest difference of at most 1e-5 of the reference's largest magnitude.
"""
from pathlib import Path

import numpy as np
import pytest
import torch

from msflow.anomaly_map import score_maps
from msflow.core import MSFlowConfig
from msflow.detector import Detector
from msflow.loss import log_likelihoods, msflow_loss, nll_per_sample
from msflow.model import FlowHead

HERE = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def ref():
    return torch.load(HERE / "flows_reference.pt", weights_only=False)


def close(a, b, rel=1e-5):
    "Largest difference at most `rel` times the reference's largest magnitude (tensors, arrays or lists of them)."
    if isinstance(b, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b): close(x, y, rel)
        return
    a, b = torch.as_tensor(np.asarray(a) if not torch.is_tensor(a) else a), torch.as_tensor(np.asarray(b) if not torch.is_tensor(b) else b)
    assert a.shape == b.shape, (a.shape, b.shape)
    tol = rel * max(b.abs().max().item(), 1e-30)
    assert (a.double() - b.double()).abs().max().item() <= tol, ((a.double() - b.double()).abs().max().item(), tol)


def test_reference_was_written_by_the_hand_written_version(ref):
    assert ref["commit"].startswith("e67e97e")
    keys = ref["random"]["state_dict"].keys()
    assert any(k.endswith("subnet.conv1.weight") for k in keys) and any(k.endswith(".perm_inv") for k in keys)


def test_random_weights_same_numbers(ref):
    r = ref["random"]
    cfg = MSFlowConfig.from_dict(r["config"])
    head = FlowHead(r["channels"], cfg, torch.Generator().manual_seed(cfg.seed)).eval()
    head.load_state_dict(r["state_dict"])  # the earlier names, renamed on load
    with torch.no_grad():
        zs, logdet = head(r["features"])
        xs, inv_logdet = head.inverse(zs)
    close(zs, r["zs"]); close(logdet, r["logdet"])
    close(xs, r["inverse"]); close(inv_logdet, r["inverse_logdet"])
    logps = log_likelihoods(zs)
    close(logps, r["logps"])
    close(nll_per_sample(zs, logdet), r["nll"]); close(msflow_loss(zs, logdet), r["loss"])
    maps = score_maps(logps, (48, 64), 0.03)
    for k in ("score", "raw_score", "mul", "raw", "add"): close(maps[k], r["maps"][k])


def test_run_saved_by_the_earlier_version_scores_the_same(ref):
    t = ref["trained"]
    det = Detector.load(HERE / t["run"])
    out = det.score_images(t["images"])
    for k in ("score", "raw_score", "mul", "add", "raw"): close(out[k], t["scores"][k])
    with torch.no_grad():
        feats = det.model.extract(torch.from_numpy(t["images"]).permute(0, 3, 1, 2).float() / 255)
        zs, logdet = det.model.flow(feats)
    close(feats, t["features"]); close(zs, t["zs"]); close(logdet, t["logdet"])
    # the trained weights really moved away from the initial ones (so the comparison covers every term)
    blk = det.model.parallel_flows[0]._transforms[0]
    assert (blk.affine.gamma() - 1).abs().max() > 1e-3
