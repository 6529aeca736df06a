"""``neurostorm report STORE --out DIR``: an HTML quality report of a store, one page per run.

``DIR/index.html`` lists every run of the manifest (subject, session, task, frames, TR and where it was
read, the source orientation, mean brain tSNR, template brain covered, quantisation RMSE, the share of DVARS
outlier frames, flags), sortable by any column, flagged runs first; ``DIR/runs/<run_id>.html`` shows one
run: the mean frame and the tSNR map on the MNI brain outline (NiPreps' ``nireports`` registration
reportlet, as fMRIPrep draws it), the carpet plot with the global signal and DVARS (and framewise
displacement where fMRIPrep's confounds file sits beside the input), the QC values and flags, and the
run's preprocessing record. Pages are self-contained (images inside, no network, no external script) and
written atomically.

The QC values (:mod:`neurostorm.data.quality`) are added to the store's manifest as new rows of the runs
(manifest parts), so ``data.exclude_flagged=true`` can leave flagged runs out of training. A run that is
missing or cannot be read is listed with what ``neurostorm store check`` finds, never a failure of the report.
"""

from __future__ import annotations

import html
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from neurostorm.data.files import is_url, write_json_atomic
from neurostorm.data.html import data_uri, page, write_page
from neurostorm.data.integrity import check_run
from neurostorm.data.manifest import merge_if_idle, plain_value, stamped, write_part
from neurostorm.data.parallel import TaskRunner
from neurostorm.data.quality import (
    DEFAULT_THRESHOLDS,
    QC_COLUMNS,
    QCThresholds,
    RunMeasures,
    measure_run,
    run_flags,
)
from neurostorm.data.store import Store

COLUMNS = [  # (manifest column or derived key, heading, format)
    ("run_id", "run", "{}"), ("qc_flags", "flags", "{}"), ("subject", "subject", "{}"),
    ("session", "session", "{}"), ("task", "task", "{}"),
    ("n_frames", "frames", "{}"), ("tr", "TR (s)", "{:.3g}"), ("tr_from", "TR read from", "{}"),
    ("source_orientation", "orientation", "{}"), ("qc_tsnr", "tSNR", "{:.1f}"),
    ("mni_coverage", "template brain covered", "{:.1%}"), ("quantization_rmse", "quantisation RMSE", "{:.4f}"),
    ("qc_dvars_outliers", "DVARS outlier frames", "{:.1%}"),
]
def confounds_file(source_path: str) -> Path | None:
    """fMRIPrep's confounds table beside a preprocessed run (``…_desc-confounds_timeseries.tsv``, or the
    older ``…_desc-confounds_regressors.tsv``), or None."""
    path = Path(source_path)
    stem = path.name.split("_space-")[0].split("_desc-")[0].split("_res-")[0].removesuffix(".nii.gz")
    for suffix in ("timeseries", "regressors"):
        candidate = path.with_name(f"{stem}_desc-confounds_{suffix}.tsv")
        if candidate.exists():
            return candidate
    return None


def framewise_displacement(source_path: str, source_tr: float, tr: float, n_frames: int) -> np.ndarray | None:
    """FD (mm) of the confounds file beside the source, at the stored frames' times (linear interpolation
    from the source TR); None without a file or a ``framewise_displacement`` column."""
    path = confounds_file(source_path)
    if path is None:
        return None
    table = pd.read_csv(path, sep="\t", na_values="n/a")
    if "framewise_displacement" not in table:
        return None
    fd = table["framewise_displacement"].to_numpy(dtype=float)
    return np.interp(np.arange(n_frames) * tr, np.arange(len(fd)) * source_tr, np.nan_to_num(fd))


def _figures(store: Store, measures: RunMeasures, row: dict, folder: Path) -> dict[str, str]:
    """The run's three figures as data URIs: mean frame on the template outline, tSNR, carpet."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import nibabel as nib
    from nireports.reportlets.modality.func import fMRIPlot
    from nireports.reportlets.mosaic import plot_registration
    from nireports.reportlets.utils import compose_view, cuts_from_bbox

    from neurostorm.data.grid import template_brain_mask

    template = nib.Nifti1Image(template_brain_mask(store.grid).astype(np.uint8), store.grid_affine)
    cuts = cuts_from_bbox(template, cuts=6)  # six slices per view inside the MNI brain
    for name, data, label, order, params in (  # the mean in three views (orientation), tSNR axial (its spread)
            ("mean", measures.mean_map, "mean frame", ("z", "x", "y"), {}),
            ("tsnr", measures.tsnr_map, "temporal SNR", ("z",), {
                "cmap": "viridis", "threshold": 1e-6, "vmax": float(np.percentile(measures.tsnr_map, 99))})):
        views = plot_registration(nib.Nifti1Image(data, store.grid_affine), name, plot_params=params, cuts=cuts,
                                  order=order, contour=template, label=label, estimate_brightness=not params,
                                  compress=False)
        compose_view(views, [], out_file=folder / f"{name}.svg")  # a row per view
    series = {"global signal": measures.global_signal, "DVARS": measures.dvars}
    fd = framewise_displacement(row["source_path"], float(row["source_tr"]), float(row["tr"]), len(measures.dvars))
    if fd is not None:
        series["FD (mm)"] = fd
    fMRIPlot(measures.carpet, segments={"brain": list(range(len(measures.carpet)))},
             confounds=pd.DataFrame(series), tr=float(row["tr"]), sort_carpet=False).plot(
        out_file=str(folder / "carpet.png"), fontsize=14)
    plt.close("all")
    return {name: data_uri(folder / file) for name, file in
            (("mean", "mean.svg"), ("tsnr", "tsnr.svg"), ("carpet", "carpet.png"))}


def report_run(location: str, row: dict, thresholds: QCThresholds, out: str) -> dict:
    """Measure one run, write its page; returns its QC values, or ``{"unreadable": problem}``."""
    store = Store(location)
    try:
        problems = check_run(store, row, tuple(store.grid.shape), data=False)
        if problems:
            raise ValueError("; ".join(problems))
        measures = measure_run(store, row["run_id"], row, store.grid, thresholds)
        with tempfile.TemporaryDirectory() as scratch:
            figures = _figures(store, measures, row, Path(scratch))
    except Exception as err:  # a missing or damaged run is a row of the report, not its failure
        problem = str(err) if isinstance(err, ValueError) else f"{type(err).__name__}: {err}"
        write_page(Path(out) / "runs" / f"{row['run_id']}.html", page(row["run_id"], (
            f"<p><a href='../index.html'>all runs</a></p><h1>{html.escape(row['run_id'])}</h1>"
            f"<p><span class='flag'>unreadable</span> {html.escape(problem)}</p><p>"
            f"<code>neurostorm store check {html.escape(location)} --data</code> checks every run; "
            "preprocess the run again to replace it.</p>")))
        return {"unreadable": problem}
    flags = "".join(f"<span class='flag'>{html.escape(f)}</span>" for f in flags_of(measures.columns)) or "none"
    record = "".join(f"<dt>{html.escape(str(k))}</dt><dd>{html.escape(str(v))}</dd>" for k, v in row.items()
                     if not str(k).startswith("qc_"))
    outliers = ", ".join(str(t) for t in np.flatnonzero(measures.outliers)) or "none"
    confounds = confounds_file(row["source_path"])
    body = (f"<p><a href='../index.html'>all runs</a></p><h1>{html.escape(row['run_id'])}</h1>"
            f"<p>flags: {flags}</p><dl><dt>mean brain tSNR</dt><dd>{measures.columns['qc_tsnr']:.1f}</dd>"
            f"<dt>DVARS outlier frames</dt><dd>{outliers}</dd><dt>mirrored axis matching MNI better</dt>"
            f"<dd>{measures.columns['qc_flip'] or 'none'}</dd><dt>framewise displacement</dt>"
            f"<dd>{html.escape(str(confounds or 'no confounds file beside the input'))}</dd></dl>"
            f"<figure><img alt='mean frame' src='{figures['mean']}'><figcaption>Mean stored frame, MNI152 brain "
            "outline</figcaption></figure>"
            f"<figure><img alt='tSNR map' src='{figures['tsnr']}'><figcaption>Temporal SNR (source units)"
            "</figcaption></figure>"
            f"<figure><img alt='carpet plot' src='{figures['carpet']}'><figcaption>Carpet plot of brain voxels "
            "with the global signal, DVARS and, where fMRIPrep's confounds sit beside the input, framewise "
            "displacement</figcaption></figure><h2>Preprocessing record</h2><dl>" + record + "</dl>")
    write_page(Path(out) / "runs" / f"{row['run_id']}.html", page(row["run_id"], body))
    return measures.columns


def flags_of(row: dict) -> list[str]:
    """A report row's flags: ``["unreadable"]`` for a run that could not be read, else its ``qc_flags``."""
    if row.get("unreadable"):
        return ["unreadable"]
    value = row.get("qc_flags")
    return [f for f in value.split(";") if f] if isinstance(value, str) else []


def _cell(row: dict, key: str, form: str) -> str:
    value = row.get(key)
    if key == "qc_flags":
        flags = flags_of(row)
        return f"<td data-value='{len(flags)}'>" + "".join(f"<span class='flag'>{html.escape(f)}</span>"
                                                            for f in flags) + "</td>"
    if key == "run_id":
        return f"<td><a href='runs/{html.escape(str(value))}.html'>{html.escape(str(value))}</a></td>"
    if pd.isna(value):
        return "<td></td>"
    try:
        text = form.format(value)
    except (ValueError, TypeError):
        text = str(value)
    return f"<td data-value='{html.escape(str(value))}'>{html.escape(text)}</td>"


def _index(location: str, rows: list[dict], thresholds: QCThresholds) -> str:
    """The sortable table of runs: unreadable runs first, then flagged ones, then by run."""
    order = sorted(rows, key=lambda r: (not r.get("unreadable"), not flags_of(r), r["run_id"]))
    lines = []
    for row in order:
        kind = "unreadable" if row.get("unreadable") else "flagged" if flags_of(row) else ""
        lines.append(f"<tr class='{kind}'>" + "".join(_cell(row, key, form) for key, _, form in COLUMNS) + "</tr>")
    readable = [r for r in rows if not r.get("unreadable")]
    counts = pd.Series([f for r in readable for f in flags_of(r)], dtype=str).value_counts()
    summary = ", ".join(f"{n} {name}" for name, n in counts.items()) or "none"
    limits = ", ".join(f"{k} {v}" for k, v in thresholds.__dict__.items())
    heading = "".join(f"<th>{html.escape(h)}</th>" for _, h, _ in COLUMNS)
    body = (f"<h1>Quality report: {html.escape(location)}</h1><p>{len(rows)} runs; flagged: "
            f"{sum(1 for r in readable if flags_of(r))} ({html.escape(summary)}); unreadable: "
            f"{len(rows) - len(readable)}. Click a heading to sort.</p><p>Thresholds: {html.escape(limits)}.</p>"
            f"<table class='sortable'><thead><tr>{heading}</tr></thead><tbody>{''.join(lines)}</tbody></table>")
    return page(f"Quality report: {location}", body)


def write_store_report(location: str, out: str | Path, thresholds: QCThresholds = DEFAULT_THRESHOLDS,
                       workers: int = 1, dask: str | None = None) -> Path:
    """The report of the store at ``location`` into ``out``; returns ``out/index.html``. Runs are measured by
    ``workers`` local processes or on a Dask cluster, except those an earlier report into ``out`` measured;
    new QC values are added to the manifest."""
    store = Store(location)
    rows = store.manifest.to_dict("records")
    out = Path(out)
    results = [_already_measured(row, out, thresholds) for row in rows]
    todo = [i for i, values in enumerate(results) if values is None]
    with TaskRunner(workers, dask) as runner:
        for index, values in runner.run(report_run, [(store.location, rows[i], thresholds, str(out)) for i in todo]):
            results[todo[index]] = values
    for row, values in zip(rows, results, strict=True):
        if "unreadable" not in values and any(_differs(row.get(c), values[c]) for c in QC_COLUMNS):
            write_part(store.location, stamped({**row, **values}))  # the run's newest row: with its QC columns
        row.update(values)
    if not is_url(store.location):
        merge_if_idle(store.location)
    index = out / "index.html"
    write_page(index, _index(store.location, rows, thresholds))
    write_json_atomic(out / "qc.json", [{k: plain_value(r.get(k)) for k in ("run_id", *QC_COLUMNS, "unreadable")}
                                        for r in rows])
    return index


def _already_measured(row: dict, out: Path, thresholds: QCThresholds) -> dict | None:
    """The QC values of a run measured by an earlier report into ``out`` (its manifest row holds them, its page
    exists and the thresholds give the same flags), else None: a store of 50,000 runs is measured once, and a
    run written again (a new manifest row) is measured again."""
    values = {column: row.get(column) for column in QC_COLUMNS}
    if any(pd.isna(v) for v in values.values()):
        return None
    values["qc_flip"] = str(values["qc_flip"] or "")
    values["qc_flags"] = str(values["qc_flags"] or "")
    if not (out / "runs" / f"{row['run_id']}.html").exists():
        return None
    return values if ";".join(run_flags({**row, **values}, thresholds)) == values["qc_flags"] else None


def _differs(old: object, new: object) -> bool:
    if pd.isna(old):
        return True
    return old != new if isinstance(new, str) else abs(float(old) - float(new)) > 1e-9

