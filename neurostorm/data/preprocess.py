"""Preprocessing: 4D NIfTI in MNI space → normalised, compactly stored frames on one fixed grid.

Per run, streaming frames so memory stays bounded whatever the run length:

1. read frames in time order (``block_frames`` at a time, float32), refusing NaN/Inf;
2. reslice each frame onto the target grid by affine (:mod:`neurostorm.data.grid`); negatives → 0;
3. resample in time to the target TR by linear interpolation (or keep the TR);
4. pass 1 accumulates per-voxel sums to get the brain mask (given file, else non-zero voxels), the global
   mean/std (or min/max) over brain voxels and all frames, and checks the run is whole-brain MNI;
5. pass 2 repeats 1–3, normalises (z-score over brain voxels, background filled with the minimum of the
   normalised brain values, or with ``fill_floor`` where that minimum lies below it and brain values below
   it clipped to it), quantises and writes each frame (:class:`neurostorm.data.runs.RunWriter`).

Every run's normalisation statistics and parameters go to the manifest, so users of pretrained weights
can reproduce exactly the input the weights expect.
"""

from __future__ import annotations

import hashlib
import json
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage
from tqdm.auto import tqdm

from neurostorm.data.files import is_url
from neurostorm.data.grid import GRIDS, Grid, Reslicer, template_brain_mask
from neurostorm.data.ingest import (
    RunSource,
    discover,
    in_shard,
    read_labels,
    repetition_time,
    select_runs,
    tr_origin,
)
from neurostorm.data.manifest import manifest_row, merge_if_idle, read_manifest, write_part
from neurostorm.data.parallel import TaskRunner
from neurostorm.data.runs import CODECS, RunWriter, completed_record
from neurostorm.data.store import Store, open_store_for_writing, remove_stale_temporaries
from neurostorm.errors import InputError
from neurostorm.version import __version__

_READ_ERRORS = (EOFError, OSError, zlib.error, ValueError, nib.filebasedimages.ImageFileError)


@dataclass(frozen=True)
class PreprocessConfig:
    """Parameters of preprocessing; all but ``codec``, ``block_frames`` and ``max_upsampling`` are recorded with
    every run."""

    tr: float | None = 0.8  # target TR in seconds; None keeps each run's own TR
    input_tr: float | None = None  # override the source TR (when headers and sidecars lack it)
    grid: str = "mni152-fsl-2mm-96"
    normalization: str = "zscore"  # "zscore" or "minmax", over brain voxels and all frames
    fill_floor: float | None = None  # z; None: the reference (background at the brain minimum, however low)
    storage: str = "int8"  # "int8" (per-frame symmetric scale) or "float16"
    min_frames: int = 20  # a run shorter than this after resampling is refused (one clip)
    max_upsampling: float = 10.0  # a run resampled to more than this many times its frames is refused (a TR misread)
    non_mni: str = "error"  # "error" or "warn" when the data does not look like whole-brain MNI
    min_mni_overlap: float = 0.8  # share of the data's brain inside the (dilated) MNI brain
    min_mni_coverage: float = 0.5  # share of the MNI brain covered by the data's brain
    codec: str = "zstd"  # "zstd" or "lz4": how the stored frames are compressed (see neurostorm.data.runs.CODECS)
    block_frames: int = 16  # frames decoded at once (memory vs. speed; not recorded)

    def __post_init__(self) -> None:
        checks = {
            "normalization": ("zscore", "minmax"), "storage": ("int8", "float16"), "non_mni": ("error", "warn"),
            "codec": tuple(CODECS),
        }
        for name, allowed in checks.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.grid not in GRIDS:
            raise ValueError(f"unknown grid {self.grid!r}; known: {sorted(GRIDS)}")
        if self.tr is not None and self.tr <= 0:
            raise ValueError(f"target TR must be positive, got {self.tr}")
        if not self.max_upsampling >= 1:
            raise ValueError(f"max_upsampling must be at least 1, got {self.max_upsampling}")
        if self.fill_floor is not None and not (self.normalization == "zscore" and -1e6 < self.fill_floor < 0):
            raise ValueError(f"fill_floor must be a negative z value with zscore normalisation, got {self.fill_floor}")

    def recorded(self) -> dict:
        params = asdict(self)
        params.pop("block_frames")
        params.pop("codec")  # how the same values are compressed: a run is not written again for it
        params.pop("max_upsampling")  # a check, not a step: the stored values do not depend on it
        if self.fill_floor is None:  # stores written before the setting existed stay up to date
            params.pop("fill_floor")
        return params


@dataclass
class PreprocessResult:
    records: list[dict] = field(default_factory=list)  # the manifest's rows: every run in the store
    processed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failures: list[InputError] = field(default_factory=list)


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def frame_ranges(frames: list[int], most: int = 8) -> str:
    """Sorted frame indices as ranges: [3, 4, 5, 9] → "3-5, 9" (at most ``most`` ranges, then "…")."""
    ranges: list[list[int]] = []
    for frame in frames:
        if ranges and frame == ranges[-1][1] + 1:
            ranges[-1][1] = frame
        else:
            ranges.append([frame, frame])
    text = [f"{a}-{b}" if b > a else f"{a}" for a, b in ranges[:most]]
    return ", ".join(text) + (f", … ({len(ranges) - most} more ranges)" if len(ranges) > most else "")


def output_length(n_source: int, tr_source: float, tr_target: float | None) -> int:
    """Number of frames after resampling ``n_source`` frames from ``tr_source`` to ``tr_target``."""
    if tr_target is None or abs(tr_target - tr_source) < 1e-9:
        return n_source
    return int(np.floor((n_source - 1) * tr_source / tr_target + 1e-9)) + 1


def resample_time(frames: Iterator[np.ndarray], n_source: int, tr_source: float,
                  tr_target: float | None) -> Iterator[np.ndarray]:
    """Linear interpolation in time, holding two frames at a time. Frame j is at time j·tr_target."""
    if output_length(n_source, tr_source, tr_target) == n_source:
        yield from frames
        return
    source = iter(frames)
    lower_index, lower = 0, next(source)
    upper = next(source, None)  # frame lower_index + 1
    for j in range(output_length(n_source, tr_source, tr_target)):
        position = j * tr_target / tr_source  # in source frames
        while upper is not None and position >= lower_index + 1 - 1e-9:
            lower_index, lower, upper = lower_index + 1, upper, next(source, None)
        weight = position - lower_index
        yield lower if upper is None or weight < 1e-6 else (1.0 - weight) * lower + weight * upper


class _Run:
    """One source run opened for streaming; validates what can be checked from the header."""

    def __init__(self, source: RunSource, config: PreprocessConfig, image: nib.Nifti1Image | None = None) -> None:
        self.source, self.config = source, config
        path = source.path
        try:
            self.img = image if image is not None else nib.load(path, keep_file_open=True)
        except _READ_ERRORS as err:
            raise InputError(path, f"cannot read NIfTI header ({err})") from None
        shape = self.img.shape
        if len(shape) > 4 and all(s == 1 for s in shape[4:]):
            shape = shape[:4]
        if len(shape) != 4:
            kind = "a 3D image" if len(shape) == 3 else f"a {len(shape)}D image"
            raise InputError(path, f"expected a 4D image (x, y, z, time), got {kind} of shape {self.img.shape}")
        if abs(np.linalg.det(self.img.affine[:3, :3])) < 1e-6:
            raise InputError(path, "singular affine: voxel sizes are zero or axes are degenerate")
        self.shape = shape
        self.tr_source = repetition_time(source, self.img.header, config.input_tr)
        self.tr = self.tr_source if config.tr is None else config.tr
        self.n_frames = output_length(shape[3], self.tr_source, config.tr)
        if self.n_frames < config.min_frames:
            raise InputError(path, f"{self.n_frames} frames after resampling to TR {self.tr:g} s, "
                                   f"fewer than one clip of {config.min_frames}")
        if self.n_frames > config.max_upsampling * shape[3]:
            raise InputError(path, f"source TR {self.tr_source:g} s would resample {shape[3]} frames to "
                                   f"{self.n_frames} at TR {self.tr:g} s, more than {config.max_upsampling:g} times "
                                   "as many: is the TR right? (give --input-tr SECONDS, or --tr keep)")
        self.grid: Grid = GRIDS[config.grid]
        self.reslice = Reslicer(self.img.affine, shape, self.grid, order=1)

    def _blocks(self, first: int = 0) -> Iterator[tuple[int, np.ndarray]]:
        """(start frame, float32 (X, Y, Z, frames) block) of the source, ``block_frames`` at a time."""
        n, block = self.shape[3], self.config.block_frames
        for start in range(first, n, block):
            stop = min(start + block, n)
            try:
                data = np.asarray(self.img.dataobj[:, :, :, start:stop], dtype=np.float32)  # any trailing size-1 axes
            except _READ_ERRORS as err:
                raise InputError(self.source.path, f"cannot read frames {start}-{stop - 1}: {err} "
                                                   "(truncated or corrupt file?)") from None
            yield start, data.reshape(*self.shape[:3], stop - start)

    def _source_frames(self) -> Iterator[np.ndarray]:
        for start, data in self._blocks():
            if not np.isfinite(data).all():
                self._refuse_nonfinite(start)
            for index in range(data.shape[3]):
                yield data[..., index]

    def _refuse_nonfinite(self, first_block: int) -> None:
        """Count the NaN/Inf values of the frames from ``first_block`` on and raise, naming those frames."""
        count, frames = 0, []
        try:
            for start, data in self._blocks(first_block):
                bad = ~np.isfinite(data.reshape(-1, data.shape[3]))  # (voxels, frames)
                count += int(bad.sum())
                frames += [start + int(k) for k in np.flatnonzero(bad.any(axis=0))]
        except InputError:
            pass  # an unreadable later block: report what could be read
        raise InputError(self.source.path, f"{count} NaN/Inf voxel values in frame{'s' * (len(frames) > 1)} "
                                           f"{frame_ranges(frames)}")

    def frames(self) -> Iterator[np.ndarray]:
        """Frames on the target grid at the target TR, negatives set to 0; each float32 ``grid.shape``."""
        resliced = (np.maximum(self.reslice(frame), 0.0) for frame in self._source_frames())
        return resample_time(resliced, self.shape[3], self.tr_source, self.config.tr)

    def brain_mask(self, mean_frame: np.ndarray) -> tuple[np.ndarray, str]:
        if self.source.mask_path is None:
            return mean_frame > 0, "data"
        try:
            mask_img = nib.load(self.source.mask_path)
            mask_data = np.asarray(mask_img.dataobj, dtype=np.float32)
        except _READ_ERRORS as err:
            raise InputError(self.source.mask_path, f"cannot read brain mask ({err})") from None
        mask_data = mask_data.reshape(mask_data.shape[:3]) if mask_data.ndim > 3 and \
            all(s == 1 for s in mask_data.shape[3:]) else mask_data
        if mask_data.ndim != 3:
            raise InputError(self.source.mask_path, f"brain mask must be 3D, got shape {mask_data.shape}")
        resliced = Reslicer(mask_img.affine, mask_data.shape, self.grid, order=0)(mask_data) > 0.5
        return resliced, f"file:{self.source.mask_path}"


def _check_mni(path: Path, mask: np.ndarray, grid: Grid, config: PreprocessConfig) -> tuple[float, float]:
    template = template_brain_mask(grid)
    overlap = float((mask & ndimage.binary_dilation(template, iterations=2)).sum() / max(mask.sum(), 1))
    coverage = float((mask & template).sum() / template.sum())
    if overlap < config.min_mni_overlap or coverage < config.min_mni_coverage:
        message = (f"does not look like whole-brain MNI152 data: {overlap:.0%} of its brain lies inside the "
                   f"MNI brain (need {config.min_mni_overlap:.0%}) and it covers {coverage:.0%} of it "
                   f"(need {config.min_mni_coverage:.0%}); register it to MNI152 first")
        if config.non_mni == "error":
            raise InputError(path, message + " or pass --non-mni warn")
        warnings.warn(f"{path}: {message}", stacklevel=2)
    return overlap, coverage


@dataclass
class Normalisation:
    """Pass 1's result for one run: its brain mask, MNI checks and normalisation statistics."""

    mask: np.ndarray  # bool, the grid's shape
    mask_source: str
    overlap: float
    coverage: float
    mean: float
    std: float
    brain_min: float
    brain_max: float
    offset: float  # normalised = max((value - offset) / divisor, floor) inside the mask, fill outside
    divisor: float
    fill: float
    floor: float  # -inf without a fill_floor

    def apply(self, frame: np.ndarray) -> np.ndarray:
        normed = np.maximum((frame - self.offset) / self.divisor, self.floor)
        return np.where(self.mask, normed, self.fill).astype(np.float32)


def measure(run: _Run) -> Normalisation:
    """Pass 1: the brain mask, the whole-brain MNI check and the run's normalisation statistics."""
    shape = run.grid.shape
    total = np.zeros(shape, np.float64)
    total_sq = np.zeros(shape, np.float64)
    low = np.full(shape, np.inf, np.float32)
    high = np.full(shape, -np.inf, np.float32)
    for frame in run.frames():
        total += frame
        total_sq += np.square(frame, dtype=np.float64)
        np.minimum(low, frame, out=low)
        np.maximum(high, frame, out=high)
    mask, mask_source = run.brain_mask(total / run.n_frames)
    n_brain = int(mask.sum())
    if n_brain == 0:
        raise InputError(run.source.path, f"empty brain mask ({mask_source})")
    overlap, coverage = _check_mni(run.source.path, mask, run.grid, run.config)
    count = n_brain * run.n_frames
    mean = float(total[mask].sum() / count)
    std = float(np.sqrt(max(total_sq[mask].sum() / count - mean**2, 0.0)))
    brain_min, brain_max = float(low[mask].min()), float(high[mask].max())
    # variance over time, pooled over brain voxels: reslicing mixes voxels but never makes a constant run vary
    voxel_mean = total[mask] / run.n_frames
    temporal_std = float(np.sqrt(max(np.mean(total_sq[mask] / run.n_frames - voxel_mean**2), 0.0)))
    if temporal_std <= 1e-6 * max(abs(mean), 1.0):  # the std over all brain values is never smaller
        raise InputError(run.source.path, "zero variance over time in the brain voxels (constant image)")
    offset, divisor = (mean, std) if run.config.normalization == "zscore" else (brain_min, brain_max - brain_min)
    floor = -np.inf if run.config.fill_floor is None else run.config.fill_floor
    return Normalisation(mask, mask_source, overlap, coverage, mean, std, brain_min, brain_max, offset, divisor,
                         max((brain_min - offset) / divisor, floor), floor)


def quantise(normed: np.ndarray, storage: str) -> tuple[np.ndarray, float | None, np.ndarray]:
    """A normalised frame as stored (int8 with a per-frame scale, or float16): (stored, scale, read back)."""
    if storage == "int8":
        scale = float(np.abs(normed).max()) / 127.0 or 1.0
        stored = np.clip(np.rint(normed / scale), -127, 127).astype(np.int8)
        return stored, scale, stored.astype(np.float32) * scale
    stored = normed.astype(np.float16)
    return stored, None, stored.astype(np.float32)


def preprocess_image(image: str | Path | nib.Nifti1Image, config: PreprocessConfig | None = None,
                     tr: float | None = None) -> np.ndarray:
    """One 4D image preprocessed in memory exactly as :func:`preprocess` stores it (same checks, errors,
    normalisation and quantisation): (T, X, Y, Z) float32 frames on ``config.grid`` at ``config.tr``.
    ``image``: a NIfTI path or a nibabel image (of a file: its BIDS JSON sidecar gives the TR and an fMRIPrep
    brain mask beside it is used, as ``preprocess`` does); ``tr`` overrides the source TR."""
    config = config or PreprocessConfig()
    if tr is not None:
        config = replace(config, input_tr=tr)
    loaded = None if isinstance(image, (str, Path)) else image
    path = image if loaded is None else loaded.get_filename()
    if path is not None and Path(path).exists():  # its sidecar (TR) and fMRIPrep brain mask are found beside it
        sources = discover([path])
        if len(sources) != 1:
            raise InputError(path, f"expected one 4D NIfTI file, found {len(sources)} runs")
        source = sources[0]
    else:
        name = Path(path or f"<in-memory image {id(image):x}>")
        source = RunSource(path=name, run_id=name.name, subject="unknown")
    run = _Run(source, config, image=loaded)
    normalisation = measure(run)
    return np.stack([quantise(normalisation.apply(frame), config.storage)[2] for frame in run.frames()])


def preprocess_run(source: RunSource, store: str, config: PreprocessConfig, checksum: str) -> dict:
    """Preprocess one run into ``runs/<run_id>.zarr`` of the store at ``store``; returns its record."""
    run = _Run(source, config)
    norm = measure(run)
    writer = RunWriter(store, source.run_id, run.n_frames, run.grid.shape, config.storage, norm.mask, config.codec)
    squared_error = 0.0
    try:
        for frame in run.frames():  # pass 2: normalise, quantise, write
            normed = norm.apply(frame)
            stored, scale, restored = quantise(normed, config.storage)
            squared_error += float(np.square(restored[norm.mask] - normed[norm.mask], dtype=np.float64).sum())
            writer.append(stored, scale)
        n_brain = int(norm.mask.sum())
        record = {
            "run_id": source.run_id, "subject": source.subject, "session": source.session,
            "task": source.task, "run": source.run, "space": source.space, "template": source.template,
            "path": f"runs/{source.run_id}.zarr", "source_path": str(source.path.resolve()),
            "source_sha256": checksum, "source_shape": list(run.shape),
            "source_voxel_mm": [float(z) for z in run.img.header.get_zooms()[:3]],
            "source_orientation": "".join(nib.aff2axcodes(run.img.affine)),
            "exact_reslice": run.reslice.exact, "source_tr": run.tr_source, "tr": run.tr,
            "tr_from": tr_origin(source, config.input_tr),
            "n_source_frames": int(run.shape[3]), "n_frames": run.n_frames,
            "mask_source": norm.mask_source, "n_brain_voxels": n_brain,
            "mni_overlap": norm.overlap, "mni_coverage": norm.coverage,
            "norm_mean": norm.mean, "norm_std": norm.std, "norm_min": norm.brain_min, "norm_max": norm.brain_max,
            "fill_value": float(norm.fill), "storage": config.storage,
            "quantization_rmse": float(np.sqrt(squared_error / (n_brain * run.n_frames))),
            "params": json.dumps(config.recorded(), sort_keys=True), "neurostorm_version": __version__,
        }
        return writer.commit(record)
    except BaseException:
        writer.abort()
        raise


def _label_table(sources: list[RunSource], selected: list[RunSource], labels: Path | None,
                 strict: bool) -> pd.DataFrame | None:
    """Labels of the ``selected`` runs' subjects from ``labels`` or each BIDS dataset's
    ``participants.tsv``; rows are checked against every subject of ``sources``."""
    wanted = sorted({s.subject for s in selected})
    if labels is not None:
        return read_labels(labels, wanted, strict, known=sorted({s.subject for s in sources}))
    tables = []
    for root in sorted({s.dataset_root for s in selected if s.dataset_root is not None}):
        if (root / "participants.tsv").exists():
            tables.append(read_labels(root / "participants.tsv",
                                      sorted({s.subject for s in selected if s.dataset_root == root}), strict,
                                      known=sorted({s.subject for s in sources if s.dataset_root == root})))
    return pd.concat(tables) if tables else None


def _labels_in(row: dict | None, record: dict) -> dict:
    """The label columns of a manifest row: what is neither the run's record nor bookkeeping."""
    return {} if row is None else {k: v for k, v in row.items() if k not in record and k != "written_at"}


def _same_labels(first: dict, second: dict) -> bool:
    """Equal label dicts, two missing values counting as equal."""
    return first.keys() == second.keys() and all(
        bool(pd.isna(first[k]) and pd.isna(second[k])) or first[k] == second[k] for k in first)


def _process_one(source: RunSource, store: str, config: PreprocessConfig, labels: dict | None,
                 previous: dict | None) -> dict:
    """Preprocess a run unless the store has it from the same file and parameters, then publish its
    manifest row (its subject's ``labels``; None keeps those of its ``previous`` row)."""
    checksum = sha256_of(source.path)
    record = completed_record(store, source.run_id)
    if record is not None and record["source_sha256"] == checksum and \
            record["params"] == json.dumps(config.recorded(), sort_keys=True):
        record.pop("complete")
        wanted = _labels_in(previous, record) if labels is None else labels
        if previous is None or not _same_labels(_labels_in(previous, record), wanted):
            write_part(store, manifest_row(record, wanted))
        return {**record, "_skipped": True}
    record = preprocess_run(source, store, config, checksum)
    row = manifest_row(record, _labels_in(previous, record) if labels is None else labels)
    write_part(store, row)  # after the data: a reader never meets a row without its run
    return row


def _process_reporting(source: RunSource, store: str, config: PreprocessConfig, labels: dict | None,
                       previous: dict | None) -> tuple[dict | InputError, list[tuple[str, type[Warning]]]]:
    """:func:`_process_one` with its bad input and warnings returned, not raised or printed, so a run in a
    worker process or on a Dask worker reports exactly as one in the main process."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            outcome: dict | InputError = _process_one(source, store, config, labels, previous)
        except InputError as err:
            outcome = err
        except Exception as err:  # an input nothing above foresaw: this run fails, the job's other runs go on
            outcome = InputError(source.path, f"cannot be preprocessed ({type(err).__name__}: {err}); "
                                              "nothing of it was written")
    return outcome, [(str(w.message), w.category) for w in caught]


def preprocess(inputs: list[str | Path], out: str | Path, config: PreprocessConfig | None = None,
               workers: int = 1, labels: str | Path | None = None, labels_policy: str = "strict",
               progress: bool = True, participants: list[str] | None = None, sessions: list[str] | None = None,
               tasks: list[str] | None = None, shard: tuple[int, int] | None = None,
               dask: str | None = None) -> PreprocessResult:
    """Preprocess every run found in ``inputs`` into the store at ``out`` (a folder or an fsspec URL).

    ``participants``/``sessions``/``tasks`` select runs by BIDS label and ``shard=(I, N)`` keeps share I
    of N, so N jobs (a scheduler's array) cover a cohort once; any number of jobs may write one store at
    once. Runs go to ``workers`` local processes or to the Dask cluster ``dask`` (``local:N`` or an address).
    Resumable: a run whose complete output already exists with the same source checksum and parameters
    is skipped. Runs with bad input are reported in ``result.failures`` (the others are still written).
    """
    config = config or PreprocessConfig()
    location = str(out).rstrip("/")
    found = discover(list(inputs))
    sources = select_runs(found, participants, sessions, tasks)
    if shard is not None:
        sources = [s for s in sources if in_shard(s.run_id, shard)]
    labels_path = Path(labels) if labels is not None else None
    if labels_path is not None and not labels_path.exists():
        raise InputError(labels_path, "no such label file")
    label_table = _label_table(found, sources, labels_path, strict=labels_policy == "strict")
    grid = GRIDS[config.grid]

    with TaskRunner(workers, dask) as runner:  # a cluster that cannot be reached fails before any write
        open_store_for_writing(location, grid.to_dict())
        if not is_url(location):
            remove_stale_temporaries(Path(location))
        previous = {row["run_id"]: row for row in read_manifest(location).to_dict("records")}
        template_brain_mask(grid)  # load once before forking workers
        result = PreprocessResult()
        tasks_args = [(s, location, config,
                       None if label_table is None or s.subject not in label_table.index
                       else label_table.loc[s.subject].to_dict(), previous.get(s.run_id)) for s in sources]
        bar = tqdm(total=len(sources), desc="preprocess", unit="run", disable=not progress)
        for index, (outcome, caught) in runner.run(_process_reporting, tasks_args):
            for message, category in caught:  # a worker's warnings, shown as the parent's own
                warnings.warn(message, category, stacklevel=2)
            if isinstance(outcome, InputError):
                result.failures.append(outcome)
            elif outcome.get("_skipped"):
                result.skipped.append(sources[index].run_id)
            else:
                result.processed.append(sources[index].run_id)
            bar.update()
        bar.close()
    merge_if_idle(location)
    result.records = read_manifest(location).to_dict("records")
    if result.processed and not is_url(location):
        _orientation_figure(Path(location), result.processed[0], grid)
    return result


def _orientation_figure(store: Path, run_id: str, grid: Grid) -> None:
    """``store/qc_orientation.png``: one run's mean frame against the MNI brain outline."""
    from neurostorm.data.qc import plot_orientation_check  # matplotlib only when a figure is drawn

    reader = Store(store)
    total = sum(block.sum(axis=0) for block in reader.iter_frames(run_id))
    plot_orientation_check(total / reader.n_frames(run_id), grid, run_id, store / "qc_orientation.png")
