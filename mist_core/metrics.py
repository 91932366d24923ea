"""The shared metrics every method is scored with: one evaluator, no method-specific branches.

Pure functions on numpy arrays (torch tensors are accepted and converted). Boxes are pixels (x0, y0, x1, y1)
with exclusive right/bottom edges, so area = (x1 - x0) * (y1 - y0). Ground-truth rows with index >= count are
padding and are ignored everywhere (the count is authoritative; padding labels are -1).

Metric keys returned by `evaluate_predictions` (lowercase snake_case, safe for MLflow / Ray Tune):

| key               | meaning                                                                       | paper      |
|-------------------|-------------------------------------------------------------------------------|------------|
| rmse              | sqrt(mean squared error) over every pixel of every image, [0, 1] scale;       | Table 1    |
|                   | only when the prediction has `recon`; no clipping of the reconstruction       |            |
| det_rate          | fraction of gt instances matched (greedy, IoU >= .5) by the image's top-count | Table 2    |
|                   | predictions by score (ground-truth K at test time)                            | "IOU 50%"  |
| cls_acc           | among those matched pairs, fraction with argmax class == gt label;            | Table 2    |
|                   | only when the prediction has `class_probs`                                    | "Classif." |
| both              | fraction of gt instances matched AND correctly classified (denominator: all   | Table 2    |
|                   | gt instances); only when the prediction has `class_probs`                     | "Both"     |
| det_rate_all      | as det_rate but matching with all K predictions                               | -          |
| mean_iou_matched  | mean IoU of the det_rate matched pairs (NaN if none matched)                  | -          |
| det_rate_tight    | as det_rate but against the tight (non-square) gt boxes                      | -          |
| ap_iou00 .. 90    | average precision at IoU >= 0, .5, .6, .7, .8, .9 (key = IoU in percent),     | Tables 3-4 |
|                   | all K predictions ranked by score; class-aware iff `class_probs` is given     | AP IoU=.X  |

Ground-truth boxes. The data stores each instance's tight box. Every method in the paper predicts square
patches (MIST, channel-wise, grid cells, AIR's single scale, Zhang's fixed boxes), and a square can never reach
IoU .5 with a thin glyph (a "1" is about 8 x 20 px: IoU .4 at best), so detection and AP match predictions
against the tight box squared about its centre (side = its longer edge, `square_boxes`); `det_rate_tight`
reports the same match against the tight boxes.

Matching (`match_greedy`): all (pred, gt) pairs with IoU >= thr are sorted by IoU descending, ties broken by the
pred's rank in `pred_order` (default: index), then by gt index; walking that list, a pair is accepted when neither
its pred nor its gt is taken yet. This is greedy, not the optimal (Hungarian) assignment.

Average precision (`average_precision`): every detection of the dataset is ranked by score (descending, stable:
ties keep image-major, then detection-index order). Walking down, a detection is a true positive if its image
still has an unmatched gt instance with IoU >= thr (and the same class when classes are given); it takes the
candidate of highest IoU (ties: lowest gt index). At thr = 0 every unmatched same-class gt is a candidate,
even at IoU 0, i.e. pure classification. Precision is made monotone non-increasing from the right and summed
over recall steps (all-point interpolation, PASCAL VOC 2010+); recall denominator = all gt instances.
AP is NaN when there is no gt instance and 0 when there is no detection.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from mist_core.data.container import MultiInstanceData
from mist_core.types import Prediction

__all__ = ["square_boxes", "rmse", "rmse_per_image", "box_iou", "match_greedy", "detection_scores",
           "average_precision", "ap_table", "ap_key", "evaluate_predictions", "AP_THRESHOLDS"]

AP_THRESHOLDS: tuple[float, ...] = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9)


def _np(x: Any) -> np.ndarray:
    """numpy view of an array-like or a torch tensor (half precision is widened to float32)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if x.is_floating_point() and x.dtype.itemsize < 4:
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def _unit(x: Any) -> np.ndarray:
    x = _np(x)
    return x.astype(np.float64) / 255.0 if x.dtype == np.uint8 else x.astype(np.float64)


def rmse_per_image(recon: Any, images: Any) -> np.ndarray:
    """(N,) root mean squared error of each image over its C*H*W pixels ([0, 1] scale; uint8 is divided by 255)."""
    r, x = _unit(recon), _unit(images)
    assert r.shape == x.shape, (r.shape, x.shape)
    return np.sqrt(((r - x) ** 2).reshape(r.shape[0], -1).mean(axis=1))


def rmse(recon: Any, images: Any) -> float:
    """Root mean squared error over all pixels of all images (not the mean of per-image RMSEs)."""
    r, x = _unit(recon), _unit(images)
    assert r.shape == x.shape, (r.shape, x.shape)
    return float(np.sqrt(np.mean((r - x) ** 2)))


def box_iou(a: Any, b: Any) -> np.ndarray:
    """IoU of boxes a (..., N, 4) and b (..., M, 4) -> (..., N, M); degenerate boxes (zero area) give 0, never NaN."""
    a, b = _np(a).astype(np.float64), _np(b).astype(np.float64)
    a, b = a[..., :, None, :], b[..., None, :, :]
    iw = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    ih = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = iw * ih

    def area(x: np.ndarray) -> np.ndarray:
        return np.clip(x[..., 2] - x[..., 0], 0, None) * np.clip(x[..., 3] - x[..., 1], 0, None)

    union = area(a) + area(b) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    return np.nan_to_num(np.clip(iou, 0.0, 1.0), nan=0.0)


def match_greedy(pred_boxes: Any, gt_boxes: Any, iou_thr: float = 0.5,
                 pred_order: Any | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Greedy one-to-one matching of one image's (K, 4) predictions to its (L, 4) ground truth.

    Repeatedly accepts the highest-IoU remaining pair with IoU >= iou_thr whose pred and gt are both unused.
    Ties: earlier in `pred_order` (a permutation of range(K), e.g. by descending score; default index order)
    wins, then the lower gt index. Returns (pred_idx, gt_idx, ious), in acceptance order.
    """
    iou = box_iou(pred_boxes, gt_boxes)
    K, L = iou.shape
    rank = np.empty(K, np.int64)
    rank[np.arange(K) if pred_order is None else np.asarray(pred_order, np.int64)] = np.arange(K)
    p, g = np.nonzero(iou >= iou_thr)
    order = np.lexsort((g, rank[p], -iou[p, g]))  # last key is primary
    used_p, used_g = np.zeros(K, bool), np.zeros(L, bool)
    out_p, out_g = [], []
    for i in order:
        if not used_p[p[i]] and not used_g[g[i]]:
            used_p[p[i]] = used_g[g[i]] = True
            out_p.append(p[i]), out_g.append(g[i])
    pi, gi = np.asarray(out_p, np.int64), np.asarray(out_g, np.int64)
    return pi, gi, iou[pi, gi]


def _gt_valid(gt_labels: np.ndarray, gt_counts: np.ndarray) -> np.ndarray:
    return np.arange(gt_labels.shape[1])[None, :] < gt_counts[:, None]


def detection_scores(pred_boxes: Any, pred_keep: Any, pred_classes: Any | None, gt_boxes: Any, gt_labels: Any,
                     gt_counts: Any, iou_thr: float = 0.5) -> dict[str, float]:
    """Table 2 metrics: greedy class-agnostic matching of the kept predictions, per image.

    Returns det_rate (matched gt / all gt), cls_acc (correct class / matched; NaN without classes or matches),
    both (matched and correct / all gt; NaN without classes) and mean_iou_matched (NaN without matches).
    """
    pb, keep, gb = _np(pred_boxes), _np(pred_keep).astype(bool), _np(gt_boxes)
    labels, counts = _np(gt_labels), _np(gt_counts).astype(np.int64)
    cls = None if pred_classes is None else _np(pred_classes)
    valid = _gt_valid(labels, counts)
    n_gt, n_match, n_correct, ious = int(valid.sum()), 0, 0, []
    for n in range(pb.shape[0]):
        kp, vg = np.flatnonzero(keep[n]), np.flatnonzero(valid[n])
        pi, gi, iou = match_greedy(pb[n, kp], gb[n, vg], iou_thr)
        n_match += len(pi)
        ious.append(iou)
        if cls is not None:
            n_correct += int((cls[n, kp[pi]] == labels[n, vg[gi]]).sum())
    nan = float("nan")
    ious_all = np.concatenate(ious) if ious else np.zeros(0)
    return {
        "det_rate": n_match / n_gt if n_gt else nan,
        "cls_acc": n_correct / n_match if cls is not None and n_match else nan,
        "both": n_correct / n_gt if cls is not None and n_gt else nan,
        "mean_iou_matched": float(ious_all.mean()) if len(ious_all) else nan,
    }


def average_precision(pred_boxes: Any, pred_scores: Any, pred_classes: Any | None, gt_boxes: Any, gt_labels: Any,
                      gt_counts: Any, iou_thr: float = 0.5, pred_keep: Any | None = None) -> float:
    """Dataset-level AP at one IoU threshold (see the module docstring); `pred_keep` (N, K) drops detections."""
    pb, gb, labels = _np(pred_boxes), _np(gt_boxes), _np(gt_labels)
    scores = np.nan_to_num(_np(pred_scores).astype(np.float64), nan=-np.inf)
    N, K = scores.shape
    valid = _gt_valid(labels, _np(gt_counts).astype(np.int64))
    n_gt = int(valid.sum())
    if n_gt == 0:
        return float("nan")
    keep = np.ones((N, K), bool) if pred_keep is None else _np(pred_keep).astype(bool)
    iou = box_iou(pb, gb)  # (N, K, L)
    cand = valid[:, None, :] & (iou >= iou_thr)
    if pred_classes is not None:
        cand &= _np(pred_classes)[:, :, None] == labels[:, None, :]
    iou = np.where(cand, iou, -1.0)  # -1 = not a candidate; IoU 0 stays a candidate at thr 0
    # A detection's TP status depends only on the higher-ranked detections of its own image, so walk the
    # per-image ranking (the same stable order as the global one restricted to each image) vectorised over images.
    order = np.argsort(-scores, axis=1, kind="stable")
    taken = np.zeros_like(valid)
    tp = np.zeros((N, K), bool)
    rows = np.arange(N)
    for r in range(K):
        d = order[:, r]
        c = np.where(taken, -1.0, iou[rows, d])  # (N, L)
        best = c.argmax(axis=1)
        hit = (c[rows, best] >= 0) & keep[rows, d]
        tp[rows[hit], d[hit]] = True
        taken[rows[hit], best[hit]] = True
    flat = np.argsort(-scores.ravel(), kind="stable")
    flat = flat[keep.ravel()[flat]]
    if len(flat) == 0:
        return 0.0
    tps = np.cumsum(tp.ravel()[flat])
    precision = np.maximum.accumulate((tps / np.arange(1, len(flat) + 1))[::-1])[::-1]  # non-increasing envelope
    recall_steps = np.diff(np.concatenate([[0.0], tps / n_gt]))
    return float(np.sum(recall_steps * precision))


def ap_key(thr: float) -> str:
    """Metric name of AP at one IoU threshold: the threshold in percent, 'ap_iou00', 'ap_iou50', 'ap_iou75'..."""
    return f"ap_iou{round(thr * 100):02d}"


def ap_table(pred_boxes: Any, pred_scores: Any, pred_classes: Any | None, gt_boxes: Any, gt_labels: Any,
             gt_counts: Any, thresholds: Sequence[float] = AP_THRESHOLDS, pred_keep: Any | None = None
             ) -> dict[str, float]:
    """AP at each IoU threshold, keyed by `ap_key` (Tables 3-4)."""
    return {ap_key(t): average_precision(pred_boxes, pred_scores, pred_classes, gt_boxes, gt_labels, gt_counts, t,
                                         pred_keep) for t in thresholds}


def _concat(preds: Prediction | Sequence[Prediction]) -> dict[str, np.ndarray | None]:
    preds = [preds] if isinstance(preds, Prediction) else list(preds)
    assert preds, "no predictions"
    out: dict[str, np.ndarray | None] = {}
    for name in ("boxes", "scores", "recon", "class_probs"):
        parts = [getattr(p, name) for p in preds]
        out[name] = None if any(x is None for x in parts) else np.concatenate([_np(x) for x in parts])
    return out


def square_boxes(boxes: np.ndarray) -> np.ndarray:
    """(..., 4) boxes -> squares with the same centre and side = the box's longer edge."""
    b = np.asarray(boxes, dtype=np.float32)
    c = (b[..., :2] + b[..., 2:]) / 2                                      # (..., 2)
    half = np.maximum(b[..., 2] - b[..., 0], b[..., 3] - b[..., 1])[..., None] / 2
    return np.concatenate([c - half, c + half], axis=-1)


def evaluate_predictions(preds: Prediction | Sequence[Prediction], data: MultiInstanceData) -> dict[str, float]:
    """The single evaluator of every method: predictions for all of `data`, in order -> metrics (module docstring).

    `preds` is one Prediction for the whole split or a list of per-batch Predictions (concatenated in order;
    `recon` / `class_probs` are used only when every batch has them).
    """
    p = _concat(preds)
    boxes, scores = p["boxes"], p["scores"].astype(np.float64)
    N, K = scores.shape
    assert N == len(data), f"{N} predictions for {len(data)} images"
    out: dict[str, float] = {}
    if p["recon"] is not None:
        out["rmse"] = rmse(p["recon"], data.float_images())
    classes = None if p["class_probs"] is None else p["class_probs"].argmax(axis=-1)
    gt = (square_boxes(data.boxes), data.labels, data.counts)
    # top-`count` by score per image (ground-truth K at test time, as the paper does)
    rank = np.empty((N, K), np.int64)
    np.put_along_axis(rank, np.argsort(-np.nan_to_num(scores, nan=-np.inf), axis=1, kind="stable"),
                      np.broadcast_to(np.arange(K), (N, K)), axis=1)
    top = rank < data.counts.astype(np.int64)[:, None]
    det = detection_scores(boxes, top, classes, *gt, iou_thr=0.5)
    out["det_rate"] = det["det_rate"]
    if classes is not None:
        out["cls_acc"], out["both"] = det["cls_acc"], det["both"]
    out["det_rate_all"] = detection_scores(boxes, np.ones((N, K), bool), None, *gt, iou_thr=0.5)["det_rate"]
    out["mean_iou_matched"] = det["mean_iou_matched"]
    out["det_rate_tight"] = detection_scores(boxes, top, None, data.boxes, data.labels, data.counts,
                                             iou_thr=0.5)["det_rate"]
    out.update(ap_table(boxes, scores, classes, *gt))
    return {k: float(v) for k, v in out.items()}
