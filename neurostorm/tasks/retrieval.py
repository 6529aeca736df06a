"""Retrieval metrics: subject re-identification (Rank-1, mAP) and fMRI-to-image retrieval (top-k, recall@k).

Similarities are cosine similarities of L2-normalised embeddings. Every metric carries a 95 % bootstrap CI
from resampling queries (each query is one held-out subject's run, or one test clip), and the chance level
of guessing is reported beside it.
"""

from __future__ import annotations

import numpy as np

from neurostorm.tasks.metrics import bootstrap


def normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def reidentification(query: np.ndarray, query_ids: np.ndarray, gallery: np.ndarray, gallery_ids: np.ndarray,
                     seed: int = 0) -> dict:
    """Rank-1 and mean average precision of finding each query's subject in the gallery.

    query (Q, D), gallery (G, D) embeddings, e.g. one per run; ``*_ids`` the subject of each row. Queries
    whose subject is not in the gallery are skipped.
    """
    query_ids, gallery_ids = np.asarray(query_ids).astype(str), np.asarray(gallery_ids).astype(str)
    keep = np.isin(query_ids, gallery_ids)
    similarity = normalise(query[keep]) @ normalise(gallery).T  # (Q, G)
    order = np.argsort(-similarity, axis=1, kind="stable")
    relevant = gallery_ids[order] == query_ids[keep][:, None]  # (Q, G) in rank order
    rank1 = relevant[:, 0].astype(float)
    hits = np.cumsum(relevant, axis=1)
    precision = hits / np.arange(1, relevant.shape[1] + 1)
    average_precision = (precision * relevant).sum(1) / relevant.sum(1)
    result = bootstrap(lambda idx: {"rank1": float(rank1[idx].mean()), "mAP": float(average_precision[idx].mean())},
                       len(rank1), seed=seed)
    n_subjects = len(np.unique(gallery_ids))
    share = float(relevant.sum(1).mean() / relevant.shape[1])  # what a random ranking scores, about
    result["chance"] = {"rank1": share, "mAP": share}
    result["n_queries"], result["n_gallery"], result["n_subjects"] = int(len(rank1)), int(len(gallery)), n_subjects
    return result


def image_retrieval(brain: np.ndarray, stimulus_of_clip: np.ndarray, images: np.ndarray,
                    ks: tuple[int, ...] = (1, 5), seed: int = 0) -> dict:
    """Top-k accuracy of finding each clip's stimulus among the candidate ``images`` (N, D).

    brain (C, D) clip embeddings in the image space, ``stimulus_of_clip`` (C,) row indices into ``images``.
    Top-k of a clip is 1 when its stimulus ranks within the first k of the N candidates (recall@k with one
    relevant item); chance is k / N.
    """
    similarity = normalise(brain) @ normalise(images).T  # (C, N)
    true = similarity[np.arange(len(similarity)), stimulus_of_clip]
    rank = (similarity > true[:, None]).sum(1)  # 0 = the right image is the most similar
    n = images.shape[0]
    ks = tuple(k for k in ks if k <= n)
    result = bootstrap(lambda idx: {f"top{k}": float((rank[idx] < k).mean()) for k in ks}, len(rank), seed=seed)
    result["chance"] = {f"top{k}": k / n for k in ks}
    result["mean_rank"] = float(rank.mean() + 1)
    result["n_clips"], result["n_images"] = int(len(rank)), int(n)
    result["ranks"] = (rank + 1).tolist()
    return result
