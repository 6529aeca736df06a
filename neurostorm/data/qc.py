"""Quality-control figures: where the data sits against the MNI brain, and the mean connectome."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # drawn off-screen, no pyplot state or backend switch

from neurostorm.data.files import replaced_atomically
from neurostorm.data.grid import Grid, template_brain_mask


def save_figure(figure: Figure, path: Path) -> None:
    """Write ``figure`` as a PNG at ``path`` atomically (jobs sharing a folder never see half a file)."""
    with replaced_atomically(Path(path)) as tmp:
        figure.savefig(tmp, dpi=100, format="png")


def plot_orientation_check(mean_frame: np.ndarray, grid: Grid, title: str, path: Path) -> None:
    """Three orthogonal slices through MNI (0, -18, 18) of a run's mean frame, MNI brain outline in red.

    Coronal and axial panels are drawn in neurological convention (subject's left on the left) whatever
    the grid's voxel order, so a mis-oriented input shows as a mismatch with the outline.
    """
    centre = np.rint(np.linalg.inv(grid.affine) @ np.array([0.0, -18.0, 18.0, 1.0]))[:3].astype(int)
    template = template_brain_mask(grid).astype(float)
    flip_x = grid.affine[0, 0] < 0  # x decreases with the voxel index (LAS): reverse to put left on the left
    panels = [
        ("sagittal", mean_frame[centre[0]].T, template[centre[0]].T),
        ("coronal", mean_frame[:, centre[1]].T, template[:, centre[1]].T),
        ("axial", mean_frame[:, :, centre[2]].T, template[:, :, centre[2]].T),
    ]
    figure = Figure(figsize=(11, 4))
    axes = figure.subplots(1, 3)
    for axis, (name, image, outline) in zip(axes, panels, strict=True):
        if flip_x and name != "sagittal":  # show left hemisphere (negative x) on the left
            image, outline = image[:, ::-1], outline[:, ::-1]
        axis.imshow(image, origin="lower", cmap="gray")
        axis.contour(outline, levels=[0.5], colors="red", linewidths=0.8)
        axis.set_title(name)
        axis.axis("off")
        if name != "sagittal":
            axis.text(0.02, 0.02, "L", color="yellow", transform=axis.transAxes, fontsize=14)
    figure.suptitle(f"{title}: mean normalised frame, MNI152 brain outline (red)")
    figure.tight_layout()
    save_figure(figure, path)


def plot_connectome(matrix: np.ndarray, title: str, path: Path) -> None:
    """A connectivity matrix (R, R) as a heat map with a symmetric colour scale."""
    limit = float(np.nanpercentile(np.abs(matrix[~np.eye(len(matrix), dtype=bool)]), 99)) or 1.0
    figure = Figure(figsize=(6, 5))
    axis = figure.subplots()
    shown = axis.imshow(matrix, cmap="RdBu_r", vmin=-limit, vmax=limit)
    figure.colorbar(shown, ax=axis, label="Fisher z")
    axis.set_title(title)
    axis.set_xlabel("ROI")
    axis.set_ylabel("ROI")
    figure.tight_layout()
    save_figure(figure, path)
