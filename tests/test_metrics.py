"""Hand-checked values for the shared metrics (mist_core.metrics)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mist_core.data.container import MultiInstanceData
from mist_core.metrics import (AP_THRESHOLDS, ap_key, ap_table, average_precision, box_iou, detection_scores,
                               evaluate_predictions, match_greedy, rmse, rmse_per_image)
from mist_core.types import Prediction

approx = pytest.approx


# --- rmse -------------------------------------------------------------------------------------------------------
def test_rmse_known_pair():
    images = np.zeros((2, 1, 2, 2), np.float32)
    recon = images.copy()
    recon[0, 0, 0, 1] = 1.0  # image 0: one of 4 pixels off by 1 -> mse .25
    assert rmse_per_image(recon, images) == approx([0.5, 0.0])
    assert rmse(recon, images) == approx(math.sqrt(0.125))  # over all pixels, not the mean of per-image RMSEs
    assert rmse(torch.from_numpy(images), images) == 0.0
    assert rmse(np.zeros((1, 1, 2, 2), np.float32), np.full((1, 1, 2, 2), 51, np.uint8)) == approx(0.2)  # uint8 /255


# --- IoU --------------------------------------------------------------------------------------------------------
def test_box_iou_known_values():
    a = np.array([[0, 0, 2, 2], [0, 0, 10, 10], [1, 1, 1, 3]], float)  # the last one is degenerate (zero width)
    b = np.array([[1, 1, 3, 3], [0, 0, 10, 10], [20, 20, 30, 30], [1, 1, 1, 3]], float)
    iou = box_iou(a, b)
    assert iou.shape == (3, 4)
    assert iou[0, 0] == approx(1 / 7)
    assert iou[1, 1] == 1.0 and iou[1, 2] == 0.0 and iou[0, 1] == approx(4 / 100)
    assert np.all(iou[2] == 0.0) and np.all(iou[:, 3] == 0.0) and not np.isnan(iou).any()
    assert box_iou(torch.tensor(a)[None].repeat(2, 1, 1), b[None]).shape == (2, 3, 4)  # batched, torch accepted


_box = st.tuples(st.floats(0, 100), st.floats(0, 100), st.floats(0.5, 50), st.floats(0.5, 50)).map(
    lambda t: [t[0], t[1], t[0] + t[2], t[1] + t[3]])


@settings(max_examples=50, deadline=None)
@given(st.lists(_box, min_size=1, max_size=5), st.lists(_box, min_size=1, max_size=5))
def test_iou_symmetric_bounded(a, b):
    ab, ba = box_iou(np.array(a), np.array(b)), box_iou(np.array(b), np.array(a))
    assert np.allclose(ab, ba.T) and np.all((ab >= 0) & (ab <= 1))
    assert np.all(np.diag(box_iou(np.array(a), np.array(a))) == 1.0)


@settings(max_examples=50, deadline=None)
@given(st.lists(_box, min_size=1, max_size=6), st.randoms(use_true_random=False))
def test_perfect_boxes_always_matched(gt, rnd):
    gt = np.array(gt)
    perm = np.array(rnd.sample(range(len(gt)), len(gt)))
    pred = gt[perm]  # shuffled exact copies (duplicates / heavy overlap allowed)
    assert len(match_greedy(pred, gt, 0.5)[0]) == len(gt)
    counts, labels = np.array([len(gt)]), np.zeros((1, len(gt)), np.int64)
    det = detection_scores(pred[None], np.ones((1, len(gt)), bool), None, gt[None], labels, counts)
    assert det["det_rate"] == 1.0
    scores = np.array([[rnd.random() for _ in gt]])
    assert average_precision(pred[None], scores, None, gt[None], labels, counts, 0.9) == approx(1.0)


# --- matching ---------------------------------------------------------------------------------------------------
def test_greedy_takes_the_best_pair_first():
    gt = np.array([[0, 0, 10, 10], [3, 0, 13, 10]], float)
    pred = np.array([[1, 0, 11, 10],    # IoU 9/11 with gt0, 8/12 with gt1
                     [-2, 0, 8, 10]], float)  # IoU 8/12 with gt0, 5/15 with gt1
    p, g, iou = match_greedy(pred, gt, 0.5)
    # greedy takes the best pair (pred0, gt0) first; pred1 is then left with gt1 at IoU 1/3 < .5 (the optimal
    # assignment, pred0-gt1 and pred1-gt0, would match both)
    assert p.tolist() == [0] and g.tolist() == [0] and iou == approx([9 / 11])


def test_greedy_tie_break_and_threshold():
    gt = np.array([[0, 0, 4, 4]], float)
    pred = np.array([[0, 0, 4, 4], [0, 0, 4, 4]], float)
    assert match_greedy(pred, gt)[0].tolist() == [0]
    assert match_greedy(pred, gt, pred_order=[1, 0])[0].tolist() == [1]
    assert len(match_greedy(np.array([[0, 0, 2, 4]], float), gt, 0.5)[0]) == 1  # IoU exactly .5 counts
    assert len(match_greedy(np.zeros((0, 4)), gt)[0]) == 0 and len(match_greedy(pred, np.zeros((0, 4)))[0]) == 0


# --- Table 2 ----------------------------------------------------------------------------------------------------
def test_detection_scores_two_images():
    gt = np.array([[[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10]],        # img0: 2 instances + padding row
                   [[5, 5, 15, 15], [0, 0, 0, 0], [0, 0, 0, 0]]], float)      # img1: 1 instance
    labels = np.array([[3, 5, -1], [7, -1, -1]])
    counts = np.array([2, 1])
    pred = np.array([[[0, 0, 10, 10], [20, 20, 30, 31], [0, 0, 10, 10]],     # hit+right, hit(10/11)+wrong, dup
                     [[5, 5, 15, 15], [40, 40, 50, 50], [10, 5, 20, 15]]], float)  # not kept, miss, IoU 1/3
    keep = np.array([[True, True, True], [False, True, True]])
    classes = np.array([[3, 4, 0], [7, 7, 7]])
    d = detection_scores(pred, keep, classes, gt, labels, counts, 0.5)
    # matched: img0 (p0,g0) right, (p1,g1) wrong; img1 nothing -> 2 of 3 gt, 1 of 2 matched right
    assert d["det_rate"] == approx(2 / 3) and d["cls_acc"] == approx(1 / 2) and d["both"] == approx(1 / 3)
    assert d["mean_iou_matched"] == approx((1 + 10 / 11) / 2)
    d = detection_scores(pred, keep, None, gt, labels, counts, 0.5)
    assert d["det_rate"] == approx(2 / 3) and math.isnan(d["cls_acc"]) and math.isnan(d["both"])


# --- AP ---------------------------------------------------------------------------------------------------------
def _ap_case():
    gt = np.array([[[0, 0, 10, 10], [20, 0, 30, 10]], [[0, 0, 10, 10], [0, 0, 0, 0]]], float)
    labels, counts = np.array([[1, 2], [3, -1]]), np.array([2, 1])
    pred = np.array([[[0, 0, 10, 10], [20, 0, 30, 10]], [[50, 50, 60, 60], [70, 70, 80, 80]]], float)
    scores = np.array([[0.9, 0.7], [0.8, 0.1]])  # ranked: TP .9, FP .8, TP .7, FP .1
    return pred, scores, gt, labels, counts


def test_ap_hand_computed():
    pred, scores, gt, labels, counts = _ap_case()
    # precision 1, 1/2, 2/3, 1/2 at recall 1/3, 1/3, 2/3, 2/3 -> AP = 1/3 * 1 + 1/3 * 2/3 = 5/9
    assert average_precision(pred, scores, None, gt, labels, counts, 0.5) == approx(5 / 9)
    keep = np.array([[True, True], [True, False]])
    assert average_precision(pred, scores, None, gt, labels, counts, 0.5, pred_keep=keep) == approx(5 / 9)
    # a duplicate of a matched detection is a false positive
    one = np.array([[[0, 0, 10, 10], [0, 0, 10, 10]]], float)
    assert average_precision(one, [[0.9, 0.8]], None, gt[:1], labels[:1], [2], 0.5) == approx(0.5)
    assert math.isnan(average_precision(one, [[0.9, 0.8]], None, gt[:1], labels[:1], [0], 0.5))  # no gt -> NaN
    assert average_precision(one, [[0.9, 0.8]], None, gt[:1], labels[:1], [2], 0.5, np.zeros((1, 2))) == 0.0


def test_ap_takes_highest_iou_candidate():
    gt = np.array([[[0, 0, 10, 10], [2, 0, 12, 10]]], float)
    pred = np.array([[[2, 0, 12, 10],    # IoU 8/12 with gt0, 1 with gt1 -> must take gt1
                      [-1, 0, 9, 10]]], float)  # IoU 9/11 with gt0, 7/13 with gt1
    assert average_precision(pred, [[0.9, 0.8]], None, gt, [[0, 0]], [2], 0.6) == approx(1.0)


def test_ap_threshold_zero_is_classification_only():
    gt = np.array([[[0, 0, 10, 10], [20, 0, 30, 10]]], float)
    labels, counts = np.array([[3, 5]]), np.array([2])
    pred = np.array([[[50, 50, 60, 60], [0, 0, 10, 10]]], float)  # pred0 overlaps nothing (IoU 0)
    scores = np.array([[0.9, 0.8]])
    assert average_precision(pred, scores, [[5, 3]], gt, labels, counts, 0.0) == approx(1.0)
    assert average_precision(pred, scores, [[5, 3]], gt, labels, counts, 0.5) == approx(0.25)  # FP then TP
    assert average_precision(pred, scores, [[7, 3]], gt, labels, counts, 0.0) == approx(0.25)  # wrong class: FP
    assert average_precision(pred, scores, None, gt, labels, counts, 0.0) == approx(1.0)


def test_padding_ignored_in_ap():
    gt = np.array([[[0, 0, 10, 10], [40, 40, 50, 50]]], float)  # row 1 is padding (count 1)
    pred = np.array([[[40, 40, 50, 50], [0, 0, 10, 10]]], float)
    # .9 hits the padding box -> must be a FP; then TP: AP = 1 * 1/2 = .5 (it would be 1 if padding counted)
    assert average_precision(pred, [[0.9, 0.8]], None, gt, [[2, -1]], [1], 0.5) == approx(0.5)
    # at IoU 0 (class-agnostic) the .9 detection takes the one real instance regardless of location: AP 1
    assert ap_table(pred, [[0.9, 0.8]], None, gt, [[2, -1]], [1], (0.0, 0.75)) == {"ap_iou00": approx(1.0),
                                                                                   "ap_iou75": approx(0.5)}


# --- the evaluator ----------------------------------------------------------------------------------------------
def _data() -> MultiInstanceData:
    boxes = np.array([[[0, 0, 8, 8], [8, 8, 16, 16]], [[4, 4, 12, 12], [0, 0, 0, 0]]], np.float32)
    return MultiInstanceData(images=np.full((2, 1, 16, 16), 51, np.uint8), boxes=boxes,
                             labels=np.array([[1, 2], [3, -1]], np.int64), counts=np.array([2, 1], np.int64))


def test_evaluate_predictions_small():
    data = _data()
    boxes = torch.tensor([[[0, 0, 8, 8], [8, 8, 16, 16], [0, 8, 8, 16]],           # hit, hit (wrong class), miss
                          [[0, 0, 4, 4], [4, 4, 12, 12], [4, 4, 12, 12]]], dtype=torch.float32)  # miss, hit, dup
    scores = torch.tensor([[0.9, 0.8, 0.1], [0.7, 0.6, 0.5]])
    cls = torch.tensor([[1, 0, 2], [3, 3, 3]])
    probs = torch.nn.functional.one_hot(cls, 10).float()
    recon = torch.zeros(2, 1, 16, 16)
    preds = [Prediction(boxes[i : i + 1], scores[i : i + 1], recon[i : i + 1], probs[i : i + 1]) for i in range(2)]
    m = evaluate_predictions(preds, data)
    assert m["rmse"] == approx(0.2)
    # top-count: img0 keeps its 2 hits (1 right), img1 keeps only its best-scored detection, a miss
    assert m["det_rate"] == approx(2 / 3) and m["cls_acc"] == approx(1 / 2) and m["both"] == approx(1 / 3)
    assert m["det_rate_all"] == approx(1.0) and m["mean_iou_matched"] == approx(1.0)
    # ranked TP FP FP TP FP FP at IoU>=.5 -> 1/3 + 1/3 * 1/2; at IoU 0 the .7 and .1 detections become
    # class-only hits: TP FP TP FP FP TP -> 1/3 + 1/3 * 2/3 + 1/3 * 1/2 = 13/18
    assert m["ap_iou00"] == approx(13 / 18)
    for t in AP_THRESHOLDS[1:]:
        assert m[ap_key(t)] == approx(0.5)
    assert set(m) == {"rmse", "det_rate", "cls_acc", "both", "det_rate_all", "mean_iou_matched", "det_rate_tight",
                      "ap_iou00", "ap_iou50", "ap_iou60", "ap_iou70", "ap_iou80", "ap_iou90"}
    assert all(k.replace("_", "").isalnum() and k.islower() for k in m)
    m2 = evaluate_predictions(Prediction(boxes, scores), data)  # class-agnostic, no recon
    assert "rmse" not in m2 and "cls_acc" not in m2 and m2["det_rate"] == approx(2 / 3)


def test_perfect_predictions():
    data = _data()
    pad = np.zeros((2, 1, 4), np.float32)  # one extra, lowest-scored, empty detection per image
    boxes = np.concatenate([data.boxes, pad], axis=1)
    scores = np.array([[0.9, 0.8, 0.0], [0.9, 0.0, 0.0]])
    probs = np.eye(10)[np.clip(np.concatenate([data.labels, [[0], [0]]], axis=1), 0, None)]
    pred = Prediction(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(data.float_images()),
                      torch.from_numpy(probs))
    m = evaluate_predictions(pred, data)
    assert m["rmse"] == 0.0
    assert all(m[k] == approx(1.0) for k in m if k != "rmse"), m


def test_square_ground_truth_for_thin_instances():
    """A thin glyph's tight box (8 x 20) squared up is what a square patch is matched against."""
    from mist_core.metrics import square_boxes

    assert square_boxes(np.array([[10, 0, 18, 20]])).tolist() == [[4, 0, 24, 20]]
    data = MultiInstanceData(images=np.zeros((1, 1, 32, 32), np.uint8), boxes=np.array([[[10, 0, 18, 20]]], np.float32),
                             labels=np.array([[1]]), counts=np.array([1]))
    m = evaluate_predictions(Prediction(torch.tensor([[[4.0, 0.0, 24.0, 20.0]]]), torch.ones(1, 1)), data)
    assert m["det_rate"] == 1.0 and m["det_rate_tight"] == 0.0              # IoU with the tight box: 160/400
