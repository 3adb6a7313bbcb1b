"""PNG plots of one continual-benchmark results document (matplotlib, Agg backend).

- `<name>_acc.png`: after each batch, mean accuracy over the batches seen so far, one
  line per strategy, joint as the dashed upper bound;
- `<name>_cost.png`: final ACC against training samples processed (log scale), with the
  cost of retraining on everything after every batch as a vertical line;
- `<name>_matrix.png`: the accuracy matrices of naive and Ratchet's defaults side by side.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.metrics import seen_acc_curve


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a display
    import matplotlib.pyplot as plt

    return plt


def _incremental(doc: dict) -> dict[str, dict]:
    return {k: v for k, v in doc["strategies"].items()
            if v.get("matrix") and len(v["matrix"]) > 1}


def plot_acc(doc: dict, path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, res in _incremental(doc).items():
        curve = seen_acc_curve(res["matrix"])
        ax.plot(range(1, len(curve) + 1), curve, marker="o", ms=3, label=name)
    joint = doc["strategies"].get("joint")
    if joint and joint.get("acc") is not None:
        ax.axhline(joint["acc"], ls="--", c="k", lw=1, label="joint (all data)")
    ax.set(xlabel="batches arrived", ylabel="mean accuracy on batches seen", ylim=(0, 1.02),
           title=f"{doc['stream']} ({doc['scale']}): accuracy over the stream")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_cost(doc: dict, path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, res in doc["strategies"].items():
        if res.get("acc") is None:
            continue
        ax.scatter(res["samples"], res["acc"], s=25)
        ax.annotate(name, (res["samples"], res["acc"]), fontsize=7, xytext=(4, 3), textcoords="offset points")
    each = doc["strategies"].get("retrain_each")
    if each:
        ax.axvline(each["samples"], ls=":", c="r", lw=1, label="retrain on all data after every batch")
        ax.legend(fontsize=7, loc="lower right")
    ax.set_xscale("log")
    ax.set(xlabel="training samples processed (log)", ylabel="final ACC (all batches)", ylim=(0, 1.02),
           title=f"{doc['stream']} ({doc['scale']}): accuracy vs training cost")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_matrices(doc: dict, path: Path, names: tuple[str, ...] = ("naive", "replay")) -> Path | None:
    shown = [(n, doc["strategies"][n]["matrix"]) for n in names if n in _incremental(doc)]
    if not shown:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(shown), figsize=(4.2 * len(shown), 3.8), squeeze=False)
    for ax, (name, matrix) in zip(axes[0], shown):
        im = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
        ax.set(title=name, xlabel="held-out batch j", ylabel="after batch i")
    fig.colorbar(im, ax=list(axes[0]), shrink=0.8, label="accuracy")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_results(doc: dict, stem: Path) -> list[Path]:
    """All plots for one results document; `stem` is the JSON path without suffix."""
    if not doc.get("strategies"):
        return []
    out = [plot_acc(doc, Path(f"{stem}_acc.png")), plot_cost(doc, Path(f"{stem}_cost.png"))]
    matrix = plot_matrices(doc, Path(f"{stem}_matrix.png"))
    return out + ([matrix] if matrix else [])
