"""
Where a prediction comes from: an attribution map
=================================================

``neurostorm explain`` computes integrated gradients of a fine-tuned model's output with respect to each
voxel and frame of a subject's clips, from the run's background value, and writes the maps on the store's
MNI grid. Here a tiny model fine-tuned for sex for one epoch is explained on two subjects.
"""

# %%
import matplotlib.pyplot as plt
from nilearn import plotting

from neurostorm.data.examples import example_cohort
from neurostorm.train.config import load_config
from neurostorm.workflows.explain import explain
from neurostorm.workflows.finetune import finetune

bids, store = example_cohort()
run = store.parent / "finetune-sex"
if not (run / "model").exists():
    finetune(load_config("tiny", [f"data.stores=[{store}]", "task.label=sex", "optim.epochs=1",
                                  "trainer.progress=false"]), run)
summary = explain(run, store.parent / "explain-sex", clips=1, steps=8)
print(summary["top_rois"][:5])

# %%
# The mean absolute attribution for the class of the first subject, over the MNI template (its affine is the
# store's grid, so it overlays any MNI image).
fig = plt.figure(figsize=(9, 3))
first = summary["classes"][0]
plotting.plot_stat_map(str(store.parent / "explain-sex" / f"attribution_{first}_abs.nii.gz"), figure=fig,
                       display_mode="ortho", title=f"|integrated gradients|, class {first}")
plt.show()
