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


def test_two_heads_resume_to_the_uninterrupted_result(tmp_path):
    "Two heads trained for two passes, and the same run stopped after one pass and resumed from its checkpoint, end bitwise equal."
    from msflow.core import seed_everything
    from msflow.train import FeatureCache, load_checkpoint, train_flows
    cfg = get_config("lite", weights="random", input_size=32, parallel_blocks=(1, 1, 1), heads=2, epochs=2, batch_size=4, device="cpu")
    seed_everything(0)
    ref = MSFlow(cfg)
    feats = [f.numpy() for f in ref.extract(torch.rand(10, 3, 32, 32))]
    cache = FeatureCache(feats)
    start = {k: v.clone() for k, v in ref.state_dict().items()}
    h_ref = train_flows(ref, cfg, cache, progress=False)

    def stop(k, h, m):
        if k == 1: raise KeyboardInterrupt
    again = MSFlow(cfg, extractor=ref.extractor); again.load_state_dict(start)
    with pytest.raises(KeyboardInterrupt): train_flows(again, cfg, cache, progress=False, checkpoint=tmp_path / "ck.pt", callback=stop)
    fresh = MSFlow(cfg, extractor=ref.extractor)  # other starting weights: the checkpoint replaces them
    h = train_flows(fresh, cfg, cache, progress=False, state=load_checkpoint(tmp_path / "ck.pt"))
    for (k, a), b in zip(ref.state_dict().items(), fresh.state_dict().values()): assert torch.equal(a, b), k
    assert h.loss == h_ref.loss and h.resumed_at == [1]
    assert not torch.equal(ref.heads[0].parallel_flows[0]._transforms[0].subnet.conv1.weight,
                           ref.heads[1].parallel_flows[0]._transforms[0].subnet.conv1.weight)


def test_weights_and_speed_names_stay_importable_from_the_method_modules():
    "The helpers that live in msflow.weights and msflow.speed are the same objects under msflow.extractor and msflow.anomaly_map."
    from msflow import anomaly_map, extractor, speed, weights
    for name in ("BUNDLED", "ReflectConv2dSame", "set_reflect_padding", "read_state_dict", "rename_efficientnet_lite",
                 "bundled_weights_file", "bundled_state_dict", "load_backbone_weights"):
        assert getattr(extractor, name) is getattr(weights, name) and name in extractor.__all__, name
    assert extractor.fold_batchnorm is speed.fold_batchnorm and "fold_batchnorm" in extractor.__all__
    assert anomaly_map.interp_matrix is speed.interp_matrix and "interp_matrix" in anomaly_map.__all__
    assert anomaly_map._INTERP is speed._INTERP  # msflow.deploy saves and restores this cache through msflow.anomaly_map


def test_maps_upsample_with_the_function_bound_in_anomaly_map(monkeypatch):
    "The maps call the `_up` of msflow.anomaly_map (bench/speed.py swaps it there), and F.interpolate gives the same maps."
    import torch.nn.functional as F
    from msflow import anomaly_map
    calls = []
    def interpolate(x, size):
        calls.append(tuple(x.shape))
        return F.interpolate(x[:, None], size=size, mode="bilinear", align_corners=True)[:, 0]
    torch.manual_seed(0)
    logps = [torch.randn(2, 8, 6, dtype=torch.float64) * 3, torch.randn(2, 4, 3, dtype=torch.float64)]
    ref = anomaly_map.score_maps(logps, (32, 24))
    monkeypatch.setattr(anomaly_map, "_up", interpolate)
    out = anomaly_map.score_maps(logps, (32, 24))
    assert len(calls) == 4  # two scales for the summed log-likelihood, two for the add map
    for k in ref: torch.testing.assert_close(out[k], ref[k], rtol=1e-12, atol=1e-12)


def test_pretrained_extractor_folds_batchnorm_without_changing_its_features():
    "The bundled lite extractor runs a copy without BatchNorms whose features equal the plain backbone's to float rounding."
    from msflow.extractor import FeatureExtractor
    fx = FeatureExtractor("tf_efficientnet_lite0", "bundled")
    x = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    folded, net = fx(x), fx.inference_backbone()
    fx.fold_bn = False
    plain = fx(x)
    assert net is not fx.backbone and not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    for a, b in zip(folded, plain):
        assert not torch.equal(a, b)  # a different computation...
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5 * b.abs().max().item())  # ...of the same features
