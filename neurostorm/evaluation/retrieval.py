"""Retrieval metrics: subject re-identification (Rank-1, mAP) and fMRI-to-image retrieval (top-k, recall@k).

Similarities are cosine similarities of L2-normalised embeddings. Each query (one held-out subject's run,
or one test clip) is scored on its own — a row of a query table — so that the queries of several
cross-validation folds pool into one table. Every metric carries a 95 % bootstrap CI from resampling
queries, and the chance level of a random ranking is reported beside it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from neurostorm.evaluation.metrics import bootstrap

TOP_K = (1, 5)  # image retrieval: top-k accuracies reported


def normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def reidentification_queries(query: np.ndarray, query_ids: np.ndarray, gallery: np.ndarray,
                             gallery_ids: np.ndarray) -> pd.DataFrame:
    """One row per query whose subject is in the gallery: ``subject``, ``rank`` (1-based rank of the first run
    of that subject), ``average_precision``, ``chance`` (the share of the gallery that is that subject, what a
    random ranking scores on average) and ``n_gallery``. query (Q, D), gallery (G, D) embeddings, e.g. one
    per run; ``*_ids`` the subject of each row."""
    query_ids, gallery_ids = np.asarray(query_ids).astype(str), np.asarray(gallery_ids).astype(str)
    keep = np.isin(query_ids, gallery_ids)
    similarity = normalise(query[keep]) @ normalise(gallery).T  # (Q, G)
    order = np.argsort(-similarity, axis=1, kind="stable")
    relevant = gallery_ids[order] == query_ids[keep][:, None]  # (Q, G) in rank order
    precision = np.cumsum(relevant, axis=1) / np.arange(1, relevant.shape[1] + 1)
    return pd.DataFrame({"subject": query_ids[keep], "rank": relevant.argmax(1) + 1,
                         "average_precision": (precision * relevant).sum(1) / relevant.sum(1),
                         "chance": relevant.sum(1) / relevant.shape[1], "n_gallery": len(gallery)})


def image_retrieval_queries(brain: np.ndarray, stimulus_of_clip: np.ndarray, images: np.ndarray) -> pd.DataFrame:
    """One row per clip: ``rank`` (1-based) of its stimulus among the candidate ``images`` (N, D) and
    ``n_candidates``. brain (C, D) clip embeddings in the image space, ``stimulus_of_clip`` (C,) row indices
    into ``images``."""
    similarity = normalise(brain) @ normalise(images).T  # (C, N)
    true = similarity[np.arange(len(similarity)), stimulus_of_clip]
    return pd.DataFrame({"rank": (similarity > true[:, None]).sum(1) + 1, "n_candidates": images.shape[0]})


def reidentification_metrics(queries: pd.DataFrame, seed: int = 0) -> dict:
    """Rank-1 and mean average precision with 95 % CIs over the queries of a query table; chance, the mean
    share of each query's subject in its gallery, beside them; ``n_gallery`` the largest gallery of a query;
    ``n_subjects`` the subjects whose queries were scored."""
    rank, precision = queries["rank"].to_numpy(), queries["average_precision"].to_numpy()
    result = bootstrap(lambda idx: {"rank1": float((rank[idx] == 1).mean()), "mAP": float(precision[idx].mean())},
                       len(rank), seed=seed)
    share = float(queries["chance"].mean())
    result["chance"] = {"rank1": share, "mAP": share}
    result["n_queries"], result["n_gallery"] = int(len(rank)), int(queries["n_gallery"].max())
    result["n_subjects"] = int(queries["subject"].astype(str).nunique())
    return result


def image_retrieval_metrics(queries: pd.DataFrame, seed: int = 0) -> dict:
    """Top-k accuracy (the stimulus ranks within the first k; recall@k with one relevant item) with 95 % CIs
    over the queries, for each k of :data:`TOP_K` no larger than the fewest candidates; chance the mean k / N;
    ``n_subjects`` the subjects whose queries were scored."""
    rank, candidates = queries["rank"].to_numpy(), queries["n_candidates"].to_numpy()
    ks = tuple(k for k in TOP_K if k <= candidates.min())
    result = bootstrap(lambda idx: {f"top{k}": float((rank[idx] <= k).mean()) for k in ks}, len(rank), seed=seed)
    result["chance"] = {f"top{k}": float((k / candidates).mean()) for k in ks}
    result["mean_rank"] = float(rank.mean())
    result["n_clips"], result["n_images"] = int(len(rank)), int(candidates.max())
    result["n_subjects"] = int(queries["subject"].astype(str).nunique())
    return result
