"""
Pretrain the encoder and look at the loss
=========================================

STORM pretraining masks windows of each clip and trains the encoder and a light decoder to restore them.
Validation reports the masked loss on held-out subjects beside the loss of predicting each clip's mean, the
bar a useful encoder must clear. The tiny preset trains for two epochs in about half a minute on 2 cores
here; the paper's ``base`` model trains on many thousand subjects on GPUs.
"""

# %%
import matplotlib.pyplot as plt
import pandas as pd

from neurostorm.data.examples import example_cohort
from neurostorm.train.config import load_config
from neurostorm.train.run import pretrain

bids, store = example_cohort()
run = store.parent / "pretrain"
if not (run / "model").exists():  # made once: the later examples start from these weights
    pretrain(load_config("tiny", [f"data.stores=[{store}]", "optim.epochs=2", "trainer.progress=false"]), run)
print(pd.read_json(run / "metrics.json", typ="series"))

# %%
# Loss per epoch from the run's CSV log (``RUN/report.html`` holds the same figure).
log = pd.read_csv(run / "logs" / "metrics.csv")
fig, ax = plt.subplots(figsize=(6, 4))
for column, label in (("train_loss_epoch", "training"), ("val_loss", "held-out subjects"),
                      ("val_loss_mean_predictor", "held-out, each clip's mean")):
    if column in log:
        values = log.dropna(subset=[column])
        ax.plot(values["epoch"] + 1, values[column], marker="o", label=label)
ax.set(xlabel="epoch", ylabel="masked reconstruction loss", title="STORM pretraining, tiny preset")
ax.legend()
plt.show()
