"""Find fMRI runs in files, folders and BIDS / fMRIPrep derivatives, with their TR, mask and labels.

BIDS file names are parsed into entities (``sub``, ``ses``, ``task``, ``run``, ``space``, ``desc`` ...)
by one small parser; nothing here slices file names at fixed positions.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from neurostorm.errors import InputError

NIFTI_SUFFIXES = (".nii.gz", ".nii")
_ENTITY = re.compile(r"^(?P<key>[a-zA-Z0-9]+)-(?P<value>[a-zA-Z0-9+.]+)$")
# MNI template variants a `space-` entity may name; the first matching prefix wins.
MNI_SPACES = ("MNI152NLin2009cAsym", "MNI152NLin2009cSym", "MNI152NLin6Asym", "MNI152NLin6Sym", "MNI152Lin",
              "MNI152")


def split_extension(path: Path) -> tuple[str, str]:
    """``sub-01_bold.nii.gz`` → (``sub-01_bold``, ``.nii.gz``)."""
    name = path.name
    for ext in (*NIFTI_SUFFIXES, ".json", ".tsv"):
        if name.endswith(ext):
            return name[: -len(ext)], ext
    return path.stem, path.suffix


def parse_entities(path: Path, require_subject: bool = True) -> tuple[dict[str, str], str | None]:
    """BIDS entities and suffix of a file name, e.g. ``({'sub': '01', 'task': 'rest'}, 'bold')``.

    A name that is not BIDS-shaped (or has no ``sub`` entity, when required) gives ``({}, None)``.
    """
    stem, _ = split_extension(path)
    *pairs, suffix = stem.split("_")
    entities: dict[str, str] = {}
    for pair in pairs:
        match = _ENTITY.match(pair)
        if match is None:
            return {}, None
        entities[match["key"]] = match["value"]
    if not re.fullmatch(r"[a-zA-Z0-9]+", suffix) or (require_subject and "sub" not in entities):
        return {}, None
    return entities, suffix


def template_of(space: str | None) -> str | None:
    """The MNI template variant a BIDS ``space-`` value claims (``MNI152NLin6Asym`` ...), or None."""
    if space is None:
        return None
    return next((variant for variant in MNI_SPACES if space.startswith(variant)), None)


@dataclass
class RunSource:
    """One 4D BOLD run to preprocess."""

    path: Path
    run_id: str
    subject: str
    session: str | None = None
    task: str | None = None
    run: str | None = None
    space: str | None = None
    mask_path: Path | None = None
    sidecar: dict = field(default_factory=dict)
    dataset_root: Path | None = None

    @property
    def template(self) -> str | None:
        return template_of(self.space)


def _run_id(entities: dict[str, str]) -> str:
    keys = ("sub", "ses", "task", "acq", "rec", "dir", "run", "echo")
    return "_".join(f"{k}-{entities[k]}" for k in keys if k in entities)


def _bids_sidecar(path: Path, entities: dict[str, str], root: Path | None) -> dict:
    """Merge JSON sidecars by BIDS inheritance: files higher up first, the file's own sidecar last."""
    folders = [path.parent]
    if root is not None:
        parent = path.parent
        while parent != root and root in parent.parents:
            parent = parent.parent
            folders.append(parent)
    merged: dict = {}
    for folder in reversed(folders):
        for candidate in sorted(folder.glob("*_bold.json")):
            # top-level sidecars such as task-rest_bold.json carry no `sub`
            cand_entities, cand_suffix = parse_entities(candidate, require_subject=False)
            if cand_suffix == "bold" and all(entities.get(k) == v for k, v in cand_entities.items()):
                try:
                    merged.update(json.loads(candidate.read_text()))
                except json.JSONDecodeError as err:
                    raise InputError(candidate, f"invalid JSON sidecar ({err})") from None
    return merged


def _bids_mask(path: Path, entities: dict[str, str]) -> Path | None:
    """The fMRIPrep ``desc-brain_mask`` that shares this run's entities (except ``desc``), if any."""
    wanted = {k: v for k, v in entities.items() if k != "desc"}
    for candidate in sorted(path.parent.glob("*_mask.nii*")):
        cand_entities, suffix = parse_entities(candidate)
        if suffix == "mask" and cand_entities.get("desc") == "brain" and \
                {k: v for k, v in cand_entities.items() if k != "desc"} == wanted:
            return candidate
    return None


def _is_bids_bold(entities: dict[str, str], suffix: str | None) -> bool:
    if suffix != "bold":
        return False
    # fMRIPrep derivatives: keep MNI-space preprocessed runs only (not T1w/native-space copies)
    if "space" in entities:
        return template_of(entities["space"]) is not None and entities.get("desc", "preproc") == "preproc"
    return True


def _source_from_file(path: Path, root: Path | None) -> RunSource:
    entities, suffix = parse_entities(path)
    if entities and suffix == "bold":
        return RunSource(
            path=path, run_id=_run_id(entities), subject=entities["sub"], session=entities.get("ses"),
            task=entities.get("task"), run=entities.get("run"), space=entities.get("space"),
            mask_path=_bids_mask(path, entities), sidecar=_bids_sidecar(path, entities, root),
            dataset_root=root,
        )
    stem, _ = split_extension(path)
    clean = re.sub(r"[^a-zA-Z0-9]+", "", stem) or "run"
    sidecar_path = path.with_name(stem + ".json")
    sidecar = json.loads(sidecar_path.read_text()) if sidecar_path.exists() else {}
    return RunSource(path=path, run_id=f"sub-{clean}", subject=clean, sidecar=sidecar, dataset_root=root)


def discover(inputs: list[str | Path]) -> list[RunSource]:
    """Runs found in ``inputs``: NIfTI files, plain folders of NIfTI files, or BIDS(-derivatives) folders.

    In a BIDS folder (one with ``dataset_description.json`` or ``sub-*`` folders, or any folder holding a
    BIDS bold run, such as one subject's folder) only ``*_bold.nii[.gz]`` files count, and of fMRIPrep
    derivatives only ``space-MNI152*`` ``desc-preproc`` runs: masks and other images beside them are skipped.
    """
    sources: list[RunSource] = []
    for item in map(Path, inputs):
        if not item.exists():
            raise InputError(item, "no such file or folder")
        if item.is_file():
            if not item.name.endswith(NIFTI_SUFFIXES):
                raise InputError(item, "not a NIfTI file (.nii or .nii.gz)")
            sources.append(_source_from_file(item, None))
            continue
        files = sorted(p for ext in NIFTI_SUFFIXES for p in item.rglob(f"*{ext}"))
        bold = [p for p in files if _is_bids_bold(*parse_entities(p))]
        if bold or (item / "dataset_description.json").exists() or any(item.glob("sub-*")):
            files = bold
        if not files:
            raise InputError(item, "no fMRI runs found (looked for *_bold.nii[.gz] or *.nii[.gz])")
        sources.extend(_source_from_file(p, item) for p in files)
    seen: dict[str, Path] = {}
    for source in sources:
        if source.run_id in seen:
            raise InputError(source.path, f"run id {source.run_id} already used by {seen[source.run_id]}")
        seen[source.run_id] = source.path
    return sources


def _bare(label: str, prefix: str) -> str:
    return label[len(prefix):] if label.startswith(prefix) else label


def select_runs(sources: list[RunSource], participants: list[str] | None = None,
                sessions: list[str] | None = None, tasks: list[str] | None = None) -> list[RunSource]:
    """The runs of the given participants, sessions and tasks (BIDS-App ``--participant-label`` etc.).

    Labels may carry their prefix (``sub-01``) or not (``01``); a label that matches no run is an error.
    """
    selected = sources
    for entity, prefix, wanted in (("subject", "sub-", participants), ("session", "ses-", sessions),
                                   ("task", "task-", tasks)):
        if not wanted:
            continue
        labels = {_bare(label, prefix) for label in wanted}
        present = {getattr(s, entity) for s in selected}
        if unknown := sorted(labels - present):
            raise InputError(f"--{entity.replace('subject', 'participant')}-label",
                             f"no run with {prefix}{', '.join(unknown)} among the inputs")
        selected = [s for s in selected if getattr(s, entity) in labels]
    return selected


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` → (I, N) with 1 ≤ I ≤ N: this job's share of the runs, e.g. ``$SLURM_ARRAY_TASK_ID/8``."""
    parts = text.split("/")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"expected I/N such as 3/8, got {text!r}")
    index, count = int(parts[0]), int(parts[1])
    if count < 1 or not 1 <= index <= count:
        raise ValueError(f"shard {index}/{count}: I must be between 1 and N (N ≥ 1)")
    return index, count


def in_shard(run_id: str, shard: tuple[int, int]) -> bool:
    """Whether a run belongs to shard I of N: a stable hash of its id, so N jobs cover every run once."""
    index, count = shard
    return int.from_bytes(hashlib.sha256(run_id.encode()).digest()[:8], "big") % count == index - 1


MS_TR_ABOVE = 100.0  # a TR above this many seconds can only be milliseconds (BIDS and NIfTI say seconds)


def _sidecar_tr(source: RunSource) -> float:
    """The sidecar's RepetitionTime in seconds; a value that can only be milliseconds is converted, with a warning."""
    value = source.sidecar["RepetitionTime"]
    try:
        tr = float(value)
    except (TypeError, ValueError):
        raise InputError(source.path, f"RepetitionTime {value!r} in the JSON sidecar is not a number of seconds "
                                      "(give --input-tr SECONDS)") from None
    if not (np.isfinite(tr) and tr > 0):
        raise InputError(source.path, f"RepetitionTime {value!r} in the JSON sidecar is not positive")
    if tr > MS_TR_ABOVE:
        warnings.warn(f"{source.path}: sidecar RepetitionTime {value!r} read as milliseconds ({tr / 1000:g} s); "
                      "BIDS gives it in seconds", stacklevel=3)
        tr /= 1000.0
    return tr


def _header_tr(source: RunSource, header: nib.Nifti1Header) -> float | None:
    """The header's TR in seconds (pixdim[4] in its time unit), or None where pixdim[4] is 0 or missing.

    A header whose time unit says seconds but whose TR is above 100 is read as milliseconds (a known
    header defect, e.g. nibabel's ``example4d.nii.gz``), with a warning.
    """
    zooms = header.get_zooms()
    tr = float(zooms[3]) if len(zooms) > 3 else 0.0
    if not np.isfinite(tr) or tr <= 0:
        return None
    unit = header.get_xyzt_units()[1]
    scale = {"msec": 1e-3, "usec": 1e-6}.get(unit, 1.0)
    if scale == 1.0 and tr > MS_TR_ABOVE:
        warnings.warn(f"{source.path}: header TR {tr} with unit '{unit}' read as milliseconds", stacklevel=3)
        scale = 1e-3
    return tr * scale


def repetition_time(source: RunSource, header: nib.Nifti1Header, override: float | None = None) -> float:
    """TR in seconds: ``override``, else the sidecar's RepetitionTime, else the NIfTI header.

    Values that can only be milliseconds (above 100) are converted with a warning naming the file; a sidecar
    TR that disagrees with the header's is used and reported; a TR that is not a positive number is an error.
    """
    if override is not None:
        return float(override)
    header_tr = _header_tr(source, header)
    if "RepetitionTime" in source.sidecar:
        tr = _sidecar_tr(source)
        if header_tr is not None and abs(header_tr - tr) > 1e-3 * tr:
            warnings.warn(f"{source.path}: sidecar RepetitionTime {tr:g} s disagrees with the header's "
                          f"{header_tr:g} s; using the sidecar's {tr:g} s (BIDS; --input-tr overrides)",
                          stacklevel=2)
        return tr
    if header_tr is None:
        raise InputError(source.path, "missing TR: no RepetitionTime in a JSON sidecar and pixdim[4] is 0 "
                                      "(give --input-tr SECONDS)")
    return header_tr


def tr_origin(source: RunSource, override: float | None = None) -> str:
    """Where :func:`repetition_time` reads the TR of ``source``: ``--input-tr``, ``sidecar`` or ``header``."""
    return "--input-tr" if override is not None else "sidecar" if "RepetitionTime" in source.sidecar else "header"


def _subject_key(value: object) -> str:
    text = str(value).strip()
    return text[4:] if text.startswith("sub-") else text


def read_labels(path: Path, subjects: list[str], strict: bool = True, known: list[str] | None = None
                ) -> pd.DataFrame:
    """Labels of ``subjects`` from a BIDS ``participants.tsv`` or a CSV/TSV with a subject column.

    Returns a frame indexed by subject (without ``sub-``). With ``strict``, a subject without a row, a
    row for a subject not in ``known`` (default: ``subjects``; all subjects of the inputs when a job
    selects some of them), or an empty value is an :class:`InputError`; otherwise a warning.
    """
    sep = "\t" if path.suffix == ".tsv" else ","
    try:
        table = pd.read_csv(path, sep=sep, na_values=["n/a", "NA", ""], keep_default_na=True, dtype=str)
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise InputError(path, f"cannot parse label table ({err})") from None
    id_column = next((c for c in ("participant_id", "subject", "subject_id", "sub") if c in table.columns), None)
    if id_column is None:
        raise InputError(path, "no subject column (participant_id, subject, subject_id or sub)")
    table["subject"] = table.pop(id_column).map(_subject_key)
    if table["subject"].duplicated().any():
        dup = sorted(table.loc[table["subject"].duplicated(), "subject"])
        raise InputError(path, f"duplicate rows for subject(s) {', '.join(dup)}")
    table = table.set_index("subject")
    problems = []
    unknown = sorted(set(table.index) - set(known if known is not None else subjects))
    missing = sorted(set(subjects) - set(table.index))
    if unknown:
        problems.append(f"rows for subject(s) not in the data: {', '.join(unknown)}")
    if missing:
        problems.append(f"no row for subject(s): {', '.join(missing)}")
    selected = table.loc[table.index.isin(subjects)]
    for column in selected.columns:
        empty = sorted(selected.index[selected[column].isna()])
        if empty:
            problems.append(f"missing '{column}' for subject(s): {', '.join(empty)}")
    if problems and strict:
        raise InputError(path, "; ".join(problems) + " (use --labels-policy lenient to keep going)")
    for problem in problems:
        warnings.warn(f"{path}: {problem}", stacklevel=2)
    return selected.apply(_numeric_if_possible)


def _numeric_if_possible(column: pd.Series) -> pd.Series:
    converted = pd.to_numeric(column, errors="coerce")
    return converted if converted.notna().sum() == column.notna().sum() else column
