"Tests of msflow.metrics against independent implementations (brute force, the official PRO loop, scikit-learn)."
import warnings

import numpy as np
import pytest
import torch
from skimage.measure import label, regionprops
from sklearn.metrics import auc, roc_auc_score

from msflow.core import MSFlowError
from msflow.metrics import (MetricWarning, aupro, aupro_paper, image_auroc, pixel_auroc, pro_curve,
                            pro_curve_paper, synthetic_maps, trapezoid)
from msflow.metrics import _sort_order


# ---------------------------------------------------------------- independent references

def brute_pro_curve(masks, maps):
    "The PRO curve from its definition: threshold the maps at every distinct score (highest first)."
    regions = [(i, lab == r) for i, lab in enumerate(label(mk, connectivity=2) for mk in masks)
               for r in range(1, lab.max() + 1)]
    normal = ~masks
    xs, ys = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        hit = maps >= t
        xs.append((hit & normal).sum() / normal.sum())
        ys.append(np.mean([hit[i][r].mean() for i, r in regions]))
    return np.array(xs + [1.0]), np.array(ys + [1.0])


def clipped_area(xs, ys, x_max):
    "Trapezoid area up to x_max, cutting the segment that crosses x_max by linear interpolation."
    area = 0.0
    for x0, y0, x1, y1 in zip(xs[:-1], ys[:-1], xs[1:], ys[1:]):
        if x0 >= x_max: break
        if x1 > x_max: x1, y1 = x_max, y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
        area += (x1 - x0) * (y0 + y1) / 2
    return area


def brute_aupro(masks, maps, fpr_limit=0.3):
    return clipped_area(*brute_pro_curve(masks, maps), fpr_limit) / fpr_limit


def official_paper_pro(gt_mask, anomaly_score_map, max_step=800, expect_fpr=0.3):
    "MSFlow's eval_seg_pro loop (no process pool); step arithmetic as under NumPy 1.x."
    max_th, min_th = anomaly_score_map.max(), anomaly_score_map.min()
    delta = np.float64(max_th - min_th) / max_step  # what (max_th - min_th) / max_step gives under NumPy 1.x
    pros_mean, fprs = [], []
    for th in np.arange(min_th, max_th, delta).tolist():
        binary = np.zeros_like(anomaly_score_map, dtype=bool)
        binary[anomaly_score_map <= th] = 0
        binary[anomaly_score_map > th] = 1
        pro = []
        for binary_map, mask in zip(binary, gt_mask):
            for region in regionprops(label(mask)):
                tp = binary_map[region.coords[:, 0], region.coords[:, 1]].sum()
                pro.append(tp / region.area)
        pros_mean.append(np.array(pro).mean())
        inverse_masks = 1 - gt_mask
        fprs.append(np.logical_and(inverse_masks, binary).sum() / inverse_masks.sum())
    pros_mean, fprs = np.array(pros_mean), np.array(fprs)
    idx = fprs < expect_fpr
    f = fprs[idx]
    f = (f - f.min()) / (f.max() - f.min())
    return auc(f, pros_mean[idx])


def variants(maps):
    "float32 maps, heavily tied maps, float64 maps."
    return [maps, np.round(maps, 1), maps.astype(np.float64)]


# ---------------------------------------------------------------- AU-PRO (official definition)

def test_aupro_perfect():
    masks, maps = synthetic_maps(4, 24, seed=0)
    assert aupro(masks, masks.astype(np.float32)) == pytest.approx(1.0, abs=1e-12)
    assert aupro(masks, np.where(masks, 10.0, maps)) == pytest.approx(1.0, abs=1e-12)


def _graded_case():
    g = np.zeros((1, 4, 4), bool); g[0, :2, :2] = True
    m = np.zeros((1, 4, 4)); m[0][~g[0]] = np.linspace(0.9, 0.1, 12)
    return g, m


def test_aupro_region_half_detected():
    g, m = _graded_case()
    m[0, 0, :2] = 1.0  # 2 of 4 region pixels above every normal pixel, 2 below
    assert aupro(g, m) == pytest.approx(0.5, abs=1e-12)
    # normal pixels tied with the missed half: the curve goes diagonally from (0, 1/2) to (1, 1)
    assert aupro(g, np.where(g, m, 0.0)) == pytest.approx((0.5 + 0.65) / 2, abs=1e-12)


def test_aupro_two_regions_of_different_size():
    g = np.zeros((1, 5, 5), bool); g[0, 0, 0] = True; g[0, 3:5, 3:5] = True
    m = np.zeros((1, 5, 5)); m[0][~g[0]] = np.linspace(0.9, 0.1, 20)
    m[0, 0, 0] = 1.0; m[0, 3, 3:5] = 1.0
    assert aupro(g, m) == pytest.approx(0.75, abs=1e-12)  # (1 + 1/2) / 2, not 3/5
    m[0, 0, 0] = 0.0  # the small region missed instead
    assert aupro(g, m) == pytest.approx(0.25, abs=1e-12)


def test_aupro_constant_inside_region_ties_are_diagonal():
    g = np.zeros((1, 4, 6), bool); g[0, 1:3, 1:3] = True
    m = np.zeros((1, 4, 6)); m[0][g[0]] = 0.5
    m[0][~g[0]] = np.r_[0.9, 0.8, 0.5, 0.5, np.linspace(0.35, 0.0, 16)]
    assert aupro(g, m) == pytest.approx(0.5, abs=1e-12)
    fpr, pro = pro_curve(g, m)
    np.testing.assert_allclose(fpr[:5], [0, 0.05, 0.1, 0.2, 0.25], atol=1e-12)
    np.testing.assert_allclose(pro[:5], [0, 0, 0, 1, 1], atol=1e-12)


def test_aupro_diagonal_neighbours_are_one_region():
    g = np.zeros((1, 5, 5), bool); g[0, 0, 0] = g[0, 0, 1] = g[0, 1, 2] = True  # (0,1)-(1,2) touch diagonally
    m = np.zeros((1, 5, 5)); m[0][~g[0]] = np.linspace(0.9, 0.1, 22)
    m[0, 0, :2] = 1.0  # two of the three pixels found
    assert aupro(g, m) == pytest.approx(2 / 3, abs=1e-12)  # one region of 3 (4-connectivity would give 2 regions: 1/2)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("fpr_limit", [0.3, 0.02, 1.0])
def test_aupro_matches_brute_force(seed, fpr_limit):
    masks, maps = synthetic_maps(4, 20, quality=0.5, seed=seed)
    for m in variants(maps):
        assert aupro(masks, m, fpr_limit) == pytest.approx(brute_aupro(masks, m, fpr_limit), abs=1e-9)


@pytest.mark.parametrize("seed", range(2))
def test_pro_curve_matches_brute_force(seed):
    masks, maps = synthetic_maps(3, 16, quality=0.5, seed=seed)
    for m in variants(maps):
        fpr, pro = pro_curve(masks, m)
        bf, bp = brute_pro_curve(masks, m)
        np.testing.assert_allclose(fpr, bf, atol=1e-12)
        np.testing.assert_allclose(pro, bp, atol=1e-12)
        cf, cp = pro_curve(masks, m, fpr_limit=0.3)  # truncated curve: a prefix of the full one, then (1, 1)
        n = len(cf) - 1
        assert cf[n - 1] > 0.3 and (cf[-1], cp[-1]) == (1.0, 1.0)
        np.testing.assert_array_equal(cf[:n], fpr[:n]); np.testing.assert_array_equal(cp[:n], pro[:n])


def test_aupro_ranking_only_and_inputs():
    masks, maps = synthetic_maps(6, 32, seed=3)
    m64 = maps.astype(np.float64)
    assert aupro(masks, m64) == pytest.approx(aupro(masks, np.exp(2 * m64)), abs=1e-12)
    assert aupro(torch.tensor(masks).float()[:, None], torch.tensor(maps)) == aupro(masks, maps)
    with pytest.raises(MSFlowError, match="same shape"): aupro(masks, maps[:, :-1])
    with pytest.raises(MSFlowError, match="binary"): aupro(masks * 255, maps)
    with pytest.raises(MSFlowError, match="fpr_limit"): aupro(masks, maps, fpr_limit=1.5)


def test_trapezoid_interpolates_at_x_max():
    x, y = [0.0, 0.2, 0.4], [0.0, 1.0, 1.0]
    assert trapezoid(x, y) == pytest.approx(0.3)
    assert trapezoid(x, y, x_max=0.3) == pytest.approx(0.1 + 0.1)
    assert trapezoid(x, y, x_max=0.2) == pytest.approx(0.1)
    with pytest.raises(MSFlowError, match="outside"): trapezoid(x, y, x_max=0.5)


def test_sort_order():
    x = np.random.default_rng(0).standard_normal(50_000).astype(np.float32)
    x[:100] = 0.0; x[100:200] = -0.0; x[200:300] = np.round(x[200:300], 1)
    v, o = _sort_order(x)
    np.testing.assert_array_equal(v, np.sort(x)); np.testing.assert_array_equal(x[o], v)
    assert np.array_equal(np.sort(o), np.arange(x.size))


# ---------------------------------------------------------------- PRO as MSFlow computes it

@pytest.mark.parametrize("seed", range(3))
def test_aupro_paper_matches_official_loop(seed):
    masks, maps = synthetic_maps(4, 24, quality=0.7, seed=seed)
    for m in variants(maps):
        assert aupro_paper(masks, m) == pytest.approx(official_paper_pro(masks, m), abs=1e-12)


def scores_on_thresholds(seed=0, steps=800):
    "float32 maps in [0, 1] where many pixels sit exactly on (float32-rounded) thresholds of the 800-step grid."
    masks, maps = synthetic_maps(4, 24, quality=0.7, seed=seed)
    maps = (maps - maps.min()) / (maps.max() - maps.min())
    thr = np.arange(np.float32(0), np.float32(1), np.float64(1) / steps).astype(np.float32)
    rng = np.random.default_rng(seed)
    flat = maps.reshape(-1)
    idx = rng.choice(np.flatnonzero((flat > 0) & (flat < 1)), size=flat.size // 2, replace=False)
    flat[idx] = rng.choice(thr[1:], size=idx.size)
    return masks, maps


@pytest.mark.parametrize("seed", range(2))
def test_aupro_paper_scores_on_thresholds(seed):
    masks, maps = scores_on_thresholds(seed)
    assert maps.min() == 0 and maps.max() == 1
    assert aupro_paper(masks, maps) == pytest.approx(official_paper_pro(masks, maps), abs=1e-12)
    thr, fpr, pro = pro_curve_paper(masks, maps)
    normal = ~masks
    for k in range(0, len(thr), 37):  # strictly greater
        assert fpr[k] == (normal & (maps > float(thr[k]))).sum() / normal.sum()  # a Python float is compared in float32


def test_aupro_paper_options_and_curve():
    masks, maps = synthetic_maps(3, 16, seed=5)
    assert aupro_paper(masks, maps, steps=50, fpr_limit=0.1) == pytest.approx(
        official_paper_pro(masks, maps, 50, 0.1), abs=1e-12)
    thr, fpr, pro = pro_curve_paper(masks, maps)
    assert len(thr) in (800, 801) and thr[0] == maps.min() and np.float32(thr[-1]) <= maps.max()  # 801: arange may overshoot
    assert (np.diff(fpr) <= 0).all() and (np.diff(pro) <= 0).all()
    # not invariant to a monotone rescaling of the scores, unlike the official AU-PRO
    assert abs(aupro_paper(masks, maps) - aupro_paper(masks, np.exp(3 * maps))) > 1e-3


def test_aupro_paper_undefined_cases_warn():
    g = np.zeros((1, 4, 4), bool); g[0, :2, :2] = True
    for masks, maps, why in [(g, g * 1.0, "divides by zero"), (g, np.ones((1, 4, 4)), "all scores are equal"),
                             (np.zeros((1, 4, 4)), np.random.rand(1, 4, 4), "no defect region")]:
        with pytest.warns(MetricWarning, match=why):
            assert np.isnan(aupro_paper(masks, maps))


# ---------------------------------------------------------------- AUROC

@pytest.mark.parametrize("seed", range(3))
def test_pixel_auroc_matches_sklearn(seed):
    masks, maps = synthetic_maps(5, 24, quality=0.4, seed=seed)
    noisy = np.round(maps + np.random.default_rng(seed).standard_normal(maps.shape), 1)
    for g, m in [(masks, v) for v in variants(maps)] + [(maps > 0, noisy)]:  # the last: more positives than negatives
        assert pixel_auroc(g, m) == pytest.approx(roc_auc_score(g.ravel(), m.ravel()), abs=1e-12)
    t = pixel_auroc(torch.tensor(masks), torch.tensor(maps, dtype=torch.float16))
    assert t == pytest.approx(roc_auc_score(masks.ravel(), torch.tensor(maps, dtype=torch.float16).float().numpy().ravel()), abs=1e-12)


def test_image_auroc_matches_sklearn():
    rng = np.random.default_rng(0)
    y = rng.random(40) < 0.5
    s = rng.standard_normal(40) + y
    assert image_auroc(y, s) == roc_auc_score(y, s)
    assert image_auroc(torch.tensor(y).int(), torch.tensor(s)) == roc_auc_score(y, s)
    with pytest.raises(MSFlowError): image_auroc(y, s[:-1])


@pytest.mark.parametrize("fn, args, why", [
    (image_auroc, ([1, 1, 1], [0.2, 0.4, 0.1]), "defective"),
    (image_auroc, ([0, 0], [0.2, 0.4]), "good"),
    (pixel_auroc, (np.zeros((2, 4, 4)), np.random.rand(2, 4, 4)), "no pixel is a defect"),
    (pixel_auroc, (np.ones((2, 4, 4)), np.random.rand(2, 4, 4)), "every pixel is a defect"),
    (aupro, (np.zeros((2, 4, 4)), np.random.rand(2, 4, 4)), "no defect region"),
    (aupro, (np.ones((2, 4, 4)), np.random.rand(2, 4, 4)), "no normal pixel"),
])
def test_one_class_gives_nan_and_warning(fn, args, why):
    with pytest.warns(MetricWarning, match=why):
        assert np.isnan(fn(*args))


# ---------------------------------------------------------------------------- hand-worked AUROC and chunked paths
def test_image_auroc_on_hand_worked_cases():
    "AUROC = P(score of a defective image > score of a good one) + P(tie) / 2, counted by hand."
    from msflow.metrics import image_auroc
    assert image_auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75   # 0.35 beats 0.1 only; 0.8 beats both: 3 of 4 pairs
    assert image_auroc([0, 1], [0.5, 0.5]) == 0.5                    # a tie counts half
    assert image_auroc([0, 0, 1], [1.0, 2.0, 2.0]) == 0.75           # beats 1.0 (1), ties 2.0 (1/2): 1.5 of 2
    assert image_auroc([0, 1, 0, 1], [1, 2, 3, 4]) == 0.75           # pairs (2>1), (4>1), (4>3) of 4
    assert image_auroc([1, 1, 0, 0], [3, 4, 1, 2]) == 1.0
    assert image_auroc([1, 1, 0, 0], [1, 2, 3, 4]) == 0.0


def test_pixel_auroc_chunked_equals_unchunked_and_pairwise():
    "The chunked Mann-Whitney count (every real test set has more than 4 M pixels) equals one chunk and a brute-force pair count."
    import numpy as np
    from msflow.metrics import _mann_whitney, _sorted_split, pixel_auroc
    rng = np.random.default_rng(0)
    g = rng.random((3, 17, 19)) < 0.3
    m = np.round(rng.random((3, 17, 19)) + 0.5 * g, 2).astype(np.float32)  # many ties
    pos, neg = _sorted_split(g, m)
    whole = _mann_whitney(pos, neg, chunk=1 << 30)
    for chunk in (1, 7, 64, 1000):
        assert _mann_whitney(pos, neg, chunk=chunk) == whole
        assert _mann_whitney(neg, pos, chunk=chunk) == 1 - whole  # the swapped branch (more positives than negatives)
    brute = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (pos.size * neg.size)
    assert abs(whole - brute) < 1e-12
    assert pixel_auroc(g, m) == whole


def test_sort_order_chunked_equals_unchunked():
    "The chunked bit-key sort behind AU-PRO gives the same order and values for any chunk size."
    import numpy as np
    from msflow.metrics import _sort_order
    rng = np.random.default_rng(1)
    x = np.round(rng.standard_normal(5000), 1).astype(np.float32)
    x[:3] = [-0.0, 0.0, np.float32(1e-38)]
    ref_v, ref_i = _sort_order(x, chunk=1 << 30)
    assert np.array_equal(ref_v, np.sort(x, kind="stable")) and np.array_equal(x[ref_i], ref_v)
    for chunk in (1, 13, 999):
        v, i = _sort_order(x, chunk=chunk)
        assert np.array_equal(v, ref_v) and np.array_equal(i, ref_i)
