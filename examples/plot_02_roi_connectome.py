"""
ROI time series and a connectome
================================

``neurostorm roi`` averages each stored run inside the regions of an atlas (resampled onto the store's grid
by its affine) and writes the time series and the functional connectivity of every run — what the
connectome baselines (FC + linear, BrainNetCNN, BNT, BrainGNN) read. Here: the Power-264 atlas and the
cohort's mean Fisher-z connectome, ordered by network.
"""

# %%
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from nilearn import plotting

from neurostorm.data.examples import example_cohort
from neurostorm.data.roi import extract_rois

bids, store = example_cohort()
summary = extract_rois(str(store), "power264", store.parent / "roi-power264", progress=False, workers=2)
print(summary)

# %%
# Every run's matrix is (264, 264); the mean over runs, with the regions grouped by network.
with np.load(store.parent / "roi-power264" / "fc.npz") as fc:
    mean = fc["fisher_z"].mean(axis=0)
rois = pd.read_csv(store.parent / "roi-power264" / "rois.tsv", sep="\t")
order = np.argsort(rois["network"].astype(str).to_numpy(), kind="stable") if "network" in rois else np.arange(len(mean))
fig, ax = plt.subplots(figsize=(6, 5))
plotting.plot_matrix(mean[np.ix_(order, order)], axes=ax, vmin=-0.8, vmax=0.8, colorbar=True,
                     title="mean Fisher-z connectome (Power-264)")
plt.show()
