"""Segmentation metrics against plain NumPy: Dice/IoU by counting, HD95/ASD/ASSD by brute-force
pairwise distances between surface pixels found by a neighbour check (no SciPy), empty cases included."""

import math

import numpy as np
import pytest

from s4mi_jax.evaluators import segmentation as seg


def _np_surface(m):
    """Foreground pixels with a 4-neighbour outside the mask (or outside the image)."""
    p = np.pad(m, 1, constant_values=False)
    inner = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return m & ~inner


def _np_directed(a, b):
    pa, pb = np.argwhere(_np_surface(a)), np.argwhere(_np_surface(b))
    d = np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1))
    return d.min(axis=1)


def _np_reference(p, g):
    inter = (p & g).sum()
    dice = 2 * inter / (p.sum() + g.sum())
    iou = inter / (p | g).sum()
    d_pg, d_gp = _np_directed(p, g), _np_directed(g, p)
    return {
        "dice": dice,
        "iou": iou,
        "hd95": np.percentile(np.concatenate([d_pg, d_gp]), 95),
        "asd": d_pg.mean(),
        "assd": np.concatenate([d_pg, d_gp]).mean(),  # Both directions pooled (medpy >= 0.5).
    }


def _blobs(rng, shape, n):
    """Random unions of rectangles (several components, holes from overlaps)."""
    m = np.zeros(shape, bool)
    for _ in range(n):
        y, x = rng.integers(0, shape[0] - 2), rng.integers(0, shape[1] - 2)
        m[y : y + rng.integers(2, 10), x : x + rng.integers(2, 10)] ^= True
    return m


@pytest.mark.parametrize("seed", range(6))
def test_random_masks_match_numpy_reference(seed):
    rng = np.random.default_rng(seed)
    shape = (24, 31)
    p, g = _blobs(rng, shape, 4), _blobs(rng, shape, 3)
    if seed == 5:  # Pure noise masks: many tiny components, edges everywhere.
        p, g = rng.random(shape) < 0.3, rng.random(shape) < 0.3
    got, want = seg.binary_metrics(p, g), _np_reference(p, g)
    for k in seg.PER_IMAGE:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-12, atol=1e-12, err_msg=k)
    assert got["hd95"] > 0 and got["asd"] != seg.binary_metrics(g, p)["asd"] or p.sum() == g.sum()


def test_assd_pools_both_directions_not_mean_of_means():
    """A small disk near one side of a big square (16 vs 124 surface pixels): the disk is close to the
    square's surface but most of the square is far from the disk, so pooling the distances (medpy
    >= 0.5, loli/medpy#108) and averaging the two directional means (medpy <= 0.4) differ."""
    yy, xx = np.mgrid[:40, :40]
    disk = (yy - 10) ** 2 + (xx - 12) ** 2 <= 3**2  # 16 surface pixels, the square 124.
    square = np.zeros((40, 40), bool)
    square[4:36, 4:36] = True
    for p, g in ((disk, square), (square, disk)):
        d_pg, d_gp = _np_directed(p, g), _np_directed(g, p)
        assert sorted([len(d_pg), len(d_gp)]) == [16, 124]
        pooled = np.concatenate([d_pg, d_gp]).mean()
        old = (d_pg.mean() + d_gp.mean()) / 2
        got = seg.binary_metrics(p, g)["assd"]
        np.testing.assert_allclose(got, pooled, rtol=1e-12)
        assert got > 1.3 * old  # Old formula: 11.38, pooled: 15.83.


def test_empty_rules_never_reward_a_miss():
    shape = (20, 30)
    empty, lesion = np.zeros(shape, bool), np.zeros(shape, bool)
    lesion[5:9, 5:12] = True
    worst = math.hypot(*shape)
    assert seg.binary_metrics(empty, empty) == {
        "dice": 1.0,
        "iou": 1.0,
        "hd95": 0.0,
        "asd": 0.0,
        "assd": 0.0,
    }
    for p, g in ((empty, lesion), (lesion, empty)):  # Missed lesion / false alarm.
        m = seg.binary_metrics(p, g)
        assert m["dice"] == 0 and m["iou"] == 0
        assert m["hd95"] == m["asd"] == m["assd"] == worst


def test_dataset_metrics_micro_and_mean_match_numpy():
    rng = np.random.default_rng(7)
    preds = rng.integers(0, 3, (5, 12, 12))
    gts = rng.integers(0, 3, (5, 12, 12))
    gts[2] = 0  # No foreground at all in one image.
    summary, rows = seg.dataset_metrics(preds, gts, 3)
    want_rows = [
        {k: np.mean([seg.binary_metrics(p == c, g == c)[k] for c in (1, 2)]) for k in seg.PER_IMAGE}
        for p, g in zip(preds, gts, strict=True)
    ]
    for k in seg.PER_IMAGE:
        np.testing.assert_allclose(summary[k], np.mean([r[k] for r in want_rows]), rtol=1e-12)
        np.testing.assert_allclose([r[k] for r in rows], [r[k] for r in want_rows], rtol=1e-12)
    iou, dice = [], []
    for c in (1, 2):
        tp = np.sum((preds == c) & (gts == c))
        fp, fn = np.sum((preds == c) & (gts != c)), np.sum((preds != c) & (gts == c))
        iou.append(tp / (tp + fp + fn))
        dice.append(2 * tp / (2 * tp + fp + fn))
    np.testing.assert_allclose(summary["iou_micro"], np.mean(iou), rtol=1e-12)
    np.testing.assert_allclose(summary["dice_micro"], np.mean(dice), rtol=1e-12)
    assert summary["num_images"] == 5


def test_overlay_strip_shows_image_truth_prediction(tmp_path):
    image = np.full((8, 8, 1), 100, np.uint8)
    gt, pred = np.zeros((8, 8), int), np.zeros((8, 8), int)
    gt[:4], pred[4:] = 1, 1
    strip = seg.overlay_strip(image, gt, pred)
    assert strip.shape == (8, 24, 3)
    assert (strip[:4, 8:16] != strip[4:, 8:16]).any() and (strip[:, :8] == strip[0, 0]).all()
    paths = seg.write_overlays(str(tmp_path), ["a.bmp"], image[None], gt[None], pred[None])
    assert paths == [str(tmp_path / "a.png")] and (tmp_path / "a.png").exists()
