"""The leaderboard as a picture: HitRatio@k with its 95% interval per strategy, the study's figure marked.

Plain Python (matplotlib, no display needed): :func:`leaderboard_png` returns PNG bytes and
:func:`markdown_image` wraps them for a Dagster ``MetadataValue.md`` (an inline data URI), so the
chart shows in the UI next to the leaderboard table.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pandas as pd


def leaderboard_png(board: pd.DataFrame, title: str = "HitRatio@k on the evaluation pairs") -> bytes:
    """A horizontal interval chart of ``board`` (``compare_to_best`` rows with ``study_hit_ratio``).

    One row per strategy, best on top: a dot at the hit ratio, a bar over its Wilson 95% interval,
    and a red cross at the study's MovieLens-32M figure where there is one.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    board = board.reset_index(drop=True)
    y = np.arange(len(board))[::-1]
    hr = board["hit_ratio"].to_numpy(float)
    low, high = board["hit_ratio_low"].to_numpy(float), board["hit_ratio_high"].to_numpy(float)
    fig, ax = plt.subplots(figsize=(7.5, 0.42 * len(board) + 1.3), dpi=100)
    try:
        ax.errorbar(hr, y, xerr=[hr - low, high - hr], fmt="o", color="#1f5fa8", ecolor="#7fa7d6",
                    elinewidth=5, capsize=0, label="hit ratio, 95% interval")
        study = board["study_hit_ratio"].to_numpy(float) if "study_hit_ratio" in board else np.full(len(board), np.nan)
        marked = ~np.isnan(study)
        if marked.any():
            ax.scatter(study[marked], y[marked], marker="x", color="#c0392b", s=60, zorder=3,
                       label="the study's figure (MovieLens 32M)")
        for yi, value in zip(y, hr, strict=True):
            ax.annotate(f"{value:.3f}", (value, yi), textcoords="offset points", xytext=(0, 7), ha="center",
                        fontsize=8)
        ax.set_yticks(y, board["strategy"].astype(str).tolist())
        ax.set_xlim(0, max(1e-3, float(np.nanmax(np.r_[high, study]))) * 1.12)
        ax.set_xlabel("HitRatio@k")
        ax.set_title(title, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        out = io.BytesIO()
        fig.savefig(out, format="png", metadata={"Software": None})
        return out.getvalue()
    finally:
        plt.close(fig)


def markdown_image(png: bytes, alt: str = "chart") -> str:
    """Markdown showing ``png`` inline (a base64 data URI)."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"
