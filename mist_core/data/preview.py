"""A PNG grid of samples with their ground-truth boxes and labels drawn, to eyeball a dataset."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from mist_core.data.container import MultiInstanceData, Splits

__all__ = ["write_preview"]


def _samples(data: Splits | MultiInstanceData, n: int) -> list[tuple[str, MultiInstanceData, int]]:
    if isinstance(data, MultiInstanceData):
        return [("", data, i) for i in range(min(n, len(data)))]
    n_train = min(len(data.train), (n + 1) // 2)
    n_test = min(len(data.test), n - n_train)
    return [("train", data.train, i) for i in range(n_train)] + [("test", data.test, i) for i in range(n_test)]


def write_preview(data: Splits | MultiInstanceData, path: str | Path, n: int = 16, title: str = "") -> Path:
    """Draw n samples (half train, half test for Splits) with boxes and labels; write a PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    items = _samples(data, n)
    if not items:
        raise ValueError("nothing to preview: the data is empty")
    _, C, H, W = items[0][1].images.shape
    cols = max(1, min(len(items), 4 if W > 2 * H else 8))
    rows = math.ceil(len(items) / cols)
    scale = 2.2 / max(H, W) * max(1.0, W / H) ** 0.5
    fig, axes = plt.subplots(rows, cols, figsize=(cols * W * scale, rows * (H * scale + 0.3)), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (split, d, i) in zip(axes.ravel(), items):
        img = d.float_images(slice(i, i + 1))[0]  # (C, H, W) in [0, 1]
        if C == 1:
            ax.imshow(img[0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        else:
            ax.imshow(np.clip(img[:3].transpose(1, 2, 0), 0, 1), interpolation="nearest")
        k = int(d.counts[i])
        for (x0, y0, x1, y1), lab in zip(d.boxes[i, :k], d.labels[i, :k]):
            # imshow puts pixel centres on integers: pixel edges are at -0.5
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, lw=0.8, ec="lime"))
            inside = y0 < 0.08 * H  # no room above the box: write the label inside it
            ax.text(x0 - 0.5, y0 - 0.5, str(int(lab)), color="yellow", fontsize=6, ha="left",
                    va="top" if inside else "bottom",
                    bbox={"facecolor": "black", "alpha": 0.5, "pad": 0.5, "lw": 0})
        ax.set_title(f"{split} #{i} (n={k})".strip(), fontsize=6)
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path
