"""
Preprocess a cohort and read its quality report
===============================================

``neurostorm preprocess`` puts fMRIPrep-style runs onto the model's MNI grid, and ``neurostorm report`` measures
every stored run: temporal SNR, DVARS outliers, how much of the MNI brain it covers and whether its axes
look mirrored. Here the same measures are drawn for each run of a simulated cohort, beside one run's mean
frame on the outline of the MNI brain.
"""

# %%
# The cohort: 12 simulated subjects, preprocessed onto the 4 mm grid (made once, then reused).
from neurostorm.data.examples import example_cohort

bids, store = example_cohort()

# %%
# The report writes ``index.html`` (a sortable table of runs) and a page per run, and adds its measures to
# the store's manifest, where ``data.exclude_flagged=true`` finds them.
from neurostorm.data.qc_report import write_store_report
from neurostorm.data.store import Store

index = write_store_report(str(store), store.parent / "report", workers=2)
manifest = Store(store).manifest
print(index)
print(manifest[["run_id", "site", "qc_tsnr", "qc_dvars_outliers", "mni_coverage", "qc_flags"]].to_string())

# %%
# Temporal SNR against the share of DVARS outlier frames, one point per run, coloured by site; a flagged run
# is drawn as a cross. Beside it, the first run's mean frame with the MNI brain outline.
import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
from nilearn import plotting

from neurostorm.data.grid import template_brain_mask
from neurostorm.data.quality import measure_run

fig = plt.figure(figsize=(12, 4))
ax = fig.add_axes((0.06, 0.14, 0.38, 0.76))
for site, runs in manifest.groupby("site"):
    flagged = runs["qc_flags"].fillna("") != ""
    ax.scatter(runs["qc_tsnr"][~flagged], 100 * runs["qc_dvars_outliers"][~flagged], label=site)
    ax.scatter(runs["qc_tsnr"][flagged], 100 * runs["qc_dvars_outliers"][flagged], marker="x", color="k")
ax.set(xlabel="mean brain tSNR", ylabel="DVARS outlier frames (%)", title="one point per run")
ax.legend(title="site")
grid = Store(store).grid
record = manifest.iloc[0].to_dict()
measures = measure_run(Store(store), record["run_id"], record, grid)
mean = nib.Nifti1Image(measures.mean_map, Store(store).grid_affine)
outline = nib.Nifti1Image(template_brain_mask(grid).astype(np.uint8), Store(store).grid_affine)
display = plotting.plot_epi(mean, display_mode="z", cut_coords=4, figure=fig, axes=(0.5, 0.1, 0.5, 0.8),
                            title=f"{record['run_id']}: mean frame", colorbar=False)
display.add_contours(outline, levels=[0.5], colors="r", linewidths=0.8)
plt.show()
