"""
A frozen encoder in a scikit-learn pipeline
===========================================

``NeuroSTORMEmbedder`` preprocesses NIfTI images in memory as ``neurostorm preprocess`` does and returns one
embedding per run, so a frozen encoder is a step of any scikit-learn pipeline. Here it feeds a logistic
regression of sex in a cross-validation that keeps each site's subjects together.
"""

# %%
import glob

import matplotlib.pyplot as plt
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from neurostorm.data.examples import example_cohort
from neurostorm.sklearn import NeuroSTORMEmbedder

bids, store = example_cohort()
pretrained = store.parent / "pretrain" / "model"
model = str(pretrained) if pretrained.exists() else "neurostorm-tiny"
participants = pd.read_csv(bids / "participants.tsv", sep="\t").set_index("participant_id")
runs = sorted(glob.glob(str(bids / "sub-*" / "func" / "*task-rest*_bold.nii.gz")))
subjects = [run.split("/")[-1].split("_")[0] for run in runs]
sex, sites = participants.loc[subjects, "sex"].to_numpy(), participants.loc[subjects, "site"].to_numpy()

# %%
# The whole pipeline takes NIfTI paths: ``make_pipeline(NeuroSTORMEmbedder(model=model), StandardScaler(),
# LogisticRegression())`` fits and predicts like any estimator. A frozen encoder with mean pooling learns
# nothing from the training runs, so its embeddings can be computed once, before the cross-validation.
features = NeuroSTORMEmbedder(model=model).fit_transform(runs)  # (12, 128): one row per run
classifier = make_pipeline(StandardScaler(), LogisticRegression(C=0.1))
scores = cross_val_score(classifier, features, sex, groups=sites, cv=GroupKFold(3), scoring="balanced_accuracy")
print(features.shape, scores)

# %%
# One bar per held-out site; chance is 0.5.
fig, ax = plt.subplots(figsize=(5, 4))
ax.bar([f"fold {i + 1}" for i in range(len(scores))], scores)
ax.axhline(0.5, color="grey", ls="--", label="chance")
ax.set(ylabel="balanced accuracy", ylim=(0, 1), title="frozen embedding + logistic regression")
ax.legend()
plt.show()
