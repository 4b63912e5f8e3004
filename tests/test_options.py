"""msflow's options for sharper maps: coupling networks with other kernels (`coupling_kernels`) and a finer finest
scale (`fine_pool_stride`). Shapes, exact parameter counts against a count from the layer sizes, the official
model unchanged when they are off, save and load, and ONNX export parity."""
import math

import numpy as np
import pytest
import torch

from msflow.core import get_config
from msflow.deploy import export_onnx, load_onnx
from msflow.detector import Detector
from msflow.flows import build_parallel_flows, count_parameters
from msflow.model import MSFlow

torch.set_num_threads(1)
LITE = [24, 40, 112]


def block_parameters(c: int, k1: int, k2: int, cond: int = 64) -> int:
    "Parameters of one parallel block, from its layers: conv k1 (d -> d), LayerNorm(d), conv k2 (d -> 2·⌊C/2⌋), global affine (2C)."
    d, out = c - c // 2 + cond, 2 * (c // 2)
    return d * d * k1 * k1 + d + 2 * d + d * out * k2 * k2 + out + 2 * c


@pytest.mark.parametrize("kernels", [(3, 3), (3, 1), (1, 1)])
def test_parameter_counts(kernels):
    cfg = get_config("lite", weights="random", coupling_kernels=kernels)
    with torch.device("meta"): flows = build_parallel_flows(LITE, cfg)
    assert count_parameters(flows) == sum(n * block_parameters(c, *kernels) for c, n in zip(LITE, cfg.parallel_blocks))
    k = flows[0]._transforms[0].subnet
    assert (k.conv1.kernel_size, k.conv2.kernel_size) == ((kernels[0],) * 2, (kernels[1],) * 2)


def test_official_model_unchanged_when_off():
    "Defaults are the official model: 3x3 couplings, every scale pooled with stride 2 (the paper's parameter count)."
    with torch.device("meta"): paper = MSFlow.from_preset("paper", pretrained=False)
    assert count_parameters(paper) == 99_556_224
    assert paper.extractor.strides == [8, 16, 32] and paper.extractor.feature_sizes(512) == [(64, 64), (32, 32), (16, 16)]
    assert paper.parallel_flows[2]._transforms[0].subnet.conv2.kernel_size == (3, 3)


def tiny(**options) -> MSFlow:
    torch.manual_seed(0)
    return MSFlow(get_config("lite", weights="random", input_size=(64, 96), parallel_blocks=(1, 1, 2), cond_channels=8, **options)).eval()


def test_fine_scale_shapes_and_per_pixel_flow():
    m = tiny(fine_pool_stride=1, coupling_kernels=(1, 1))
    x = torch.rand(2, 3, 64, 96)
    feats = m.extract(x)
    assert [tuple(f.shape[-2:]) for f in feats] == [(16, 24), (4, 6), (2, 3)] == m.extractor.feature_sizes((64, 96))
    out = m.score_maps(x)
    assert out["add"].shape == out["mul"].shape == (2, 64, 96)
    # with 1x1 couplings and no fusion, a scale's latent at a pixel depends on that pixel's features only
    nf = tiny(fine_pool_stride=1, coupling_kernels=(1, 1), fusion=False)
    f2 = [f.clone() for f in feats]; f2[0][:, :, 3, 5] += 1
    with torch.no_grad(): d = (nf.flow(f2)[0][0] - nf.flow(feats)[0][0]).abs().sum((0, 1))
    assert d.nonzero().tolist() == [[3, 5]]


@pytest.mark.parametrize("options", [dict(coupling_kernels=(1, 1)), dict(fine_pool_stride=1, coupling_kernels=(3, 1))])
def test_save_load_and_onnx_parity(tmp_path, options):
    det = Detector(tiny(**options), 0.5, 1.0)
    det.save(tmp_path / "model.pt")
    back = Detector.load(tmp_path / "model.pt")
    assert (back.config.coupling_kernels, back.config.fine_pool_stride) == (det.config.coupling_kernels, det.config.fine_pool_stride)
    images = np.random.default_rng(0).integers(0, 256, (3, 64, 96, 3), dtype=np.uint8)
    a, b = det.score_images(images), back.score_images(images)
    for k in a: np.testing.assert_array_equal(a[k], b[k])
    onnx = load_onnx(export_onnx(det, tmp_path / "model.onnx", batch=None))  # export checks parity itself before writing
    o = onnx.score_images(images)
    for k in ("score", "raw_score", "mul", "add"):
        np.testing.assert_allclose(o[k], a[k], rtol=1e-4, atol=1e-4 * float(np.abs(a[k]).max()))
