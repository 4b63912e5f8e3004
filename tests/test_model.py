"The whole model's log-determinant (parallel flows + fusion flow) against autograd's Jacobian, in float64."
import pytest
import torch
from torch.autograd.functional import jacobian

from msflow.core import get_config
from msflow.model import MSFlow

torch.set_num_threads(1)


@pytest.mark.parametrize("fusion", [True, False])
def test_full_model_logdet_equals_autograd(fusion):
    "log|det J| that `MSFlow.flow` returns equals slogdet of the Jacobian of all latents w.r.t. all features."
    torch.manual_seed(0)
    cfg = get_config("lite", weights="random", parallel_blocks=(1, 2, 2), fusion=fusion, device="cpu")
    model = MSFlow(cfg).double()
    chs = model.channels
    sizes = [(4, 4), (2, 2), (1, 1)]  # the three scales of a 32x32 input after pooling: halving per stage
    with torch.no_grad():  # flows start near the identity: make them mix, so the test is not trivial
        for p in list(model.parallel_flows.parameters()) + (list(model.fusion_flow.parameters()) if fusion else []):
            p.add_(0.05 * torch.randn_like(p))
    feats = [torch.randn(2, c, *hw, dtype=torch.float64) for c, hw in zip(chs, sizes)]
    n = [c * h * w for c, (h, w) in zip(chs, sizes)]

    def latents(flat, b):
        xs, i = [], 0
        for c, (h, w), k in zip(chs, sizes, n):
            xs.append(flat[i:i + k].view(1, c, h, w)); i += k
        zs, _ = model.flow(xs)
        return torch.cat([z.reshape(-1) for z in zs])

    _, logdet = model.flow(feats)
    for b in range(2):
        flat = torch.cat([f[b].reshape(-1) for f in feats])
        J = jacobian(lambda v: latents(v, b), flat, vectorize=True)
        assert J.shape == (sum(n), sum(n))
        sign, ref = torch.linalg.slogdet(J)
        assert sign != 0
        torch.testing.assert_close(logdet[b], ref, rtol=1e-9, atol=1e-8)
