"""Figures as files: a headless pyplot and one way to save a figure (PNG for viewing, SVG for
papers), shared by `dlmi report` and `dlmi diagnose`."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, out: Path, stem: str, top: float = 0.94) -> list[Path]:
    """Write out/stem.png and out/stem.svg and close the figure; `top` leaves room for the
    suptitle above the panels."""
    fig.tight_layout(rect=(0, 0, 1, top))
    paths = [Path(out) / f"{stem}.png", Path(out) / f"{stem}.svg"]
    for p in paths:
        fig.savefig(p, dpi=120, bbox_inches="tight")
    pyplot().close(fig)
    return paths
