"""Diversity-aware selection of ``budget`` records from the embeddings (and optional scores).

- k-center greedy (farthest-first traversal; Sener & Savarese 2018 use it for core sets): each pick
  is the record farthest from everything picked so far, its distance multiplied by its score
  weight, so a budget covers the data's regions before it repeats one.
- cluster-balanced: k-means clusters, then round-robin over clusters taking each cluster's best
  scored record next, so small clusters (rare tasks) are represented.
"""

from __future__ import annotations

import numpy as np


def k_center(embeddings: np.ndarray, budget: int, weights: np.ndarray | None = None) -> list[int]:
    n = embeddings.shape[0]
    if budget >= n:
        return list(range(n))
    weights = np.ones(n, dtype=np.float32) if weights is None else weights.astype(np.float32)
    first = int(np.argmax(weights))  # start from the best-scored record (ties: the earliest)
    picked = [first]
    distance = 1.0 - embeddings @ embeddings[first]  # cosine distance to the nearest pick
    distance[first] = -np.inf
    for _ in range(budget - 1):
        nxt = int(np.argmax(distance * weights))
        picked.append(nxt)
        distance = np.minimum(distance, 1.0 - embeddings @ embeddings[nxt])
        distance[picked] = -np.inf
    return picked


def kmeans(embeddings: np.ndarray, k: int, seed: int, iterations: int = 20) -> np.ndarray:
    """Cluster labels from spherical k-means (cosine), k-means++ seeding. Small and dependency-free."""
    rng = np.random.default_rng(seed)
    n = embeddings.shape[0]
    k = max(1, min(k, n))
    centers = [embeddings[rng.integers(n)]]
    closest = 1.0 - embeddings @ centers[0]
    for _ in range(k - 1):
        p = np.clip(closest, 0, None) ** 2
        idx = rng.choice(n, p=p / p.sum()) if p.sum() > 0 else rng.integers(n)
        centers.append(embeddings[idx])
        closest = np.minimum(closest, 1.0 - embeddings @ embeddings[idx])
    centers = np.stack(centers)
    labels = np.zeros(n, dtype=np.int64)
    for _ in range(iterations):
        labels = np.argmax(embeddings @ centers.T, axis=1)
        for c in range(k):
            members = embeddings[labels == c]
            if len(members):
                mean = members.mean(axis=0)
                centers[c] = mean / max(np.linalg.norm(mean), 1e-12)
    return labels


def cluster_balanced(labels: np.ndarray, budget: int, weights: np.ndarray | None = None) -> list[int]:
    n = len(labels)
    if budget >= n:
        return list(range(n))
    weights = np.ones(n) if weights is None else weights
    queues = {c: sorted(np.flatnonzero(labels == c).tolist(), key=lambda i: (-weights[i], i))
              for c in sorted(set(labels.tolist()))}
    picked: list[int] = []
    while len(picked) < budget:
        for c in list(queues):
            if queues[c] and len(picked) < budget:
                picked.append(queues[c].pop(0))
            if not queues[c]:
                del queues[c]
    return picked


def default_clusters(n: int) -> int:
    return max(1, int(round((n / 2) ** 0.5)))
