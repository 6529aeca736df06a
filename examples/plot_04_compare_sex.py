"""
Probe sex with confidence intervals, against FC + linear
========================================================

``neurostorm compare`` runs several methods on one task under one protocol: the same subjects, the same
metrics, each with its 95 % bootstrap CI over test subjects. Here a linear probe of the pretrained encoder
and the FC + linear baseline predict sex, cross-validated in three folds (one site per fold), so every
subject is tested once.
"""

# %%
import matplotlib.pyplot as plt

from neurostorm.data.examples import example_cohort
from neurostorm.train.config import load_config
from neurostorm.workflows.compare import compare, parse_methods

bids, store = example_cohort()
pretrained = store.parent / "pretrain" / "model"  # from the pretraining example (random weights if absent)
encoder = f"neurostorm-tiny@{pretrained}:probe" if pretrained.exists() else "neurostorm-tiny:probe"
config = load_config("tiny", [f"data.stores=[{store}]", "task.label=sex", "data.cv_folds=3",
                              "trainer.progress=false"])
table = compare(config, parse_methods(f"{encoder},fc-linear"), store.parent / "compare-sex", progress=False)
print(table[["method", "balanced_accuracy", "balanced_accuracy_ci_low", "balanced_accuracy_ci_high"]])

# %%
# Balanced accuracy with its CI; chance is 0.5. Twelve subjects give wide intervals: this shows the
# protocol, not which method is better.
fig, ax = plt.subplots(figsize=(5, 4))
low = table["balanced_accuracy"] - table["balanced_accuracy_ci_low"]
high = table["balanced_accuracy_ci_high"] - table["balanced_accuracy"]
names = {encoder: "linear probe of the\ntiny encoder", "fc-linear": "FC + linear"}
ax.bar([names[m] for m in table["method"]], table["balanced_accuracy"], yerr=[low, high], capsize=5)
ax.axhline(0.5, color="grey", ls="--", label="chance")
ax.set(ylabel="balanced accuracy (95 % CI)", ylim=(0, 1), title="sex, 3-fold cross-validation")
ax.legend()
plt.show()
