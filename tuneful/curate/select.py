"""Diversity-aware selection of ``budget`` records from the embeddings (and optional scores).

- k-center greedy (farthest-first traversal; Sener & Savarese 2018 use it for core sets): each pick
  is the record farthest from everything picked so far, its distance multiplied by its score
  weight, so a budget covers the data's regions before it repeats one.
- cluster-balanced: k-means clusters, then round-robin over clusters taking each cluster's best
  scored record next, so small clusters (rare tasks) are represented.
- quality-diverse (the default; in the spirit of DEITA, Liu et al. 2024, arXiv:2312.15685): records in
  order of quality score, each admitted only while its group's quota has room and it is not too close to a
  record already admitted; quotas grow with the square root of a group's size, so a kind of record that is
  rare but valuable (refusals, clarifications) keeps a share and an over-represented one does not crowd
  the budget.
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


def group_quotas(sizes: dict[int, int], budget: int, power: float = 0.5,
                 claims: dict[int, int] | None = None) -> dict[int, int]:
    """Records per group: proportional to claim**power (the claim is the group's size unless ``claims`` gives
    another, e.g. its size before dedup; largest remainders rounded up), never above a group's size, summing
    to min(budget, total): what a small group cannot use goes to the others."""
    quotas = {g: 0 for g in sizes}
    left = min(budget, sum(sizes.values()))
    while left > 0:
        open_groups = [g for g in sizes if quotas[g] < sizes[g]]
        weight = {g: (claims or sizes)[g] ** power for g in open_groups}
        total = sum(weight.values())
        shares = {g: min(left * weight[g] / total, sizes[g] - quotas[g]) for g in open_groups}
        grant = {g: int(shares[g]) for g in open_groups}
        spare = left - sum(grant.values())
        for g in sorted(open_groups, key=lambda g: (-(shares[g] - grant[g]), g)):  # largest remainders first
            if spare <= 0:
                break
            if grant[g] < sizes[g] - quotas[g]:
                grant[g] += 1
                spare -= 1
        for g in open_groups:
            quotas[g] += grant[g]
        left -= sum(grant.values())
    return quotas


def quality_diverse(embeddings: np.ndarray, scores: np.ndarray, groups: np.ndarray, budget: int, *,
                    max_similarity: float = 0.9, power: float = 0.5, min_score: float = 0.0,
                    group_sizes: dict[int, int] | None = None, tier: np.ndarray | None = None,
                    excluded: np.ndarray | None = None) -> list[int]:
    """Positions of ``budget`` records, best score first within each group's quota.

    Only records scoring at least ``min_score``, and not ``excluded`` (e.g. replies the other replies to their
    instruction outvote), count towards the quotas. Quotas grow with ``group_sizes``
    (default: the records per group here) ** ``power``, never above a group's eligible records. ``tier``
    (default all 0) ranks records a group takes only when it lacks better ones: tier 0 are the distinct
    records; a record of tier t > 0 (a removed duplicate a small group may take back) is admitted only after
    every eligible record of lower tiers. Passes, each best first: (1) eligible tier-0 records less similar
    than ``max_similarity`` to every one admitted so far, within quota; (2) the other eligible tier-0 ones,
    within quota; (3) eligible records of tier 1, 2, ... in turn, within quota; (4) any tier-0 record, only
    if the budget is still not filled. A group's quota never pulls its worst records in: a wrong reply is not
    admitted for being unlike the right ones. ``embeddings`` must be L2-normalised."""
    n = len(scores)
    tier = np.zeros(n, dtype=np.int64) if tier is None else np.asarray(tier, dtype=np.int64)
    if budget >= int((tier == 0).sum()):  # every distinct record fits: nothing is taken back
        return [i for i in range(n) if tier[i] == 0]
    eligible = scores >= min_score
    if excluded is not None:
        eligible &= ~np.asarray(excluded, dtype=bool)
    sizes = {int(g): int(((groups == g) & eligible).sum()) for g in np.unique(groups)}
    claims = {g: (group_sizes or sizes).get(g, sizes[g]) for g in sizes}
    quotas = group_quotas(sizes, budget, power, claims=claims)
    order = np.lexsort((np.arange(n), -scores))  # best first, ties by position
    taken = {g: 0 for g in sizes}
    picked: list[int] = []
    chosen = np.zeros(n, dtype=bool)
    nearest = np.full(n, -1.0, dtype=np.float32)  # each record's highest similarity to an admitted one
    passes = [(True, True, 0), (False, True, 0)] + [(False, True, t) for t in range(1, int(tier.max()) + 1)]
    for check_distance, within_quota, level in passes + [(False, False, 0)]:
        for i in order:
            g = int(groups[i])
            if chosen[i] or tier[i] != level or (within_quota and (not eligible[i] or taken[g] >= quotas[g])):
                continue
            if check_distance and nearest[i] >= max_similarity:
                continue
            chosen[i] = True
            taken[g] += 1
            picked.append(int(i))
            if check_distance:
                nearest = np.maximum(nearest, embeddings @ embeddings[i])
            if len(picked) == budget:
                return picked
    return picked
