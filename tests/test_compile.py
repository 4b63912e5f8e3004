"`compile=True` (torch.compile) gives the same training and the same scores as eager execution."
import os

import numpy as np
import pytest
import torch

from msflow.core import get_config
from msflow.demo_data import make_demo_dataset
from msflow.engine import fit


@pytest.mark.skipif(os.environ.get("MSFLOW_SKIP_COMPILE") == "1", reason="compiling takes about a minute on 2 cores")
def test_compiled_training_and_scoring_match_eager(tmp_path):
    torch.set_num_threads(1)
    root = make_demo_dataset(tmp_path / "data", categories=["grass"], n_train=8, n_test=4, size=64, seed=1)
    cfg = get_config("lite", weights="random", input_size=64, epochs=2, batch_size=4, parallel_blocks=(1, 1, 1),
                     val_fraction=0.0, device="cpu")
    quiet = lambda *a, **k: None
    det_e, m_e = fit(root, "grass", None, cfg, progress=False, log=quiet)
    det_c, m_c = fit(root, "grass", None, cfg.replace(compile=True), progress=False, log=quiet)
    for (k, a), b in zip(det_e.model.state_dict().items(), det_c.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=k)
    imgs = sorted((root / "grass" / "test").rglob("*.png"))
    s_e = np.array([r["score"] for r in det_e.predict(imgs, progress=False)])
    s_c = np.array([r["score"] for r in det_c.predict(imgs, progress=False)])
    np.testing.assert_allclose(s_c, s_e, rtol=1e-4, atol=1e-5)
    assert abs(m_e["pixel_auroc"] - m_c["pixel_auroc"]) < 1e-3
