"""One quality score per record from the named signals in ``scores.py``, comparable across kinds of task.

A raw signal is not comparable across tasks: a short factual reply is far more likely under a reference model
than a long essay, and an IFD near 1 is normal for a refusal. So each signal is turned into a percentile rank
*within the record's group* (an embedding cluster, or a task named in the data): "how good is this reply
compared with replies to similar instructions". The quality score is the weighted mean of the ranks a record
has (a signal may be missing for some records, e.g. agreement where no other reply to the instruction exists);
a record with no signal at all scores 0.5.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

# signal name -> True when higher raw values are better
HIGHER_IS_BETTER = {"agreement": True, "likelihood": True, "ifd": False, "judge": True, "reward": True}


def percentile_ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks scaled to [0, 1] with ties averaged; a single value ranks 0.5."""
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    if n == 1:
        return np.array([0.5])
    order = np.argsort(values, kind="stable")
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = np.arange(n, dtype=np.float64)
    for value in np.unique(values):  # average the ranks of ties
        tied = values == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks / (n - 1)


def combined_scores(signals: Mapping[str, Sequence[float | None]], groups: Sequence[int],
                    weights: Mapping[str, float]) -> np.ndarray:
    """Quality in [0, 1] per record: the weighted mean of its signals' within-group percentile ranks.

    ``signals`` maps a signal name (a key of HIGHER_IS_BETTER) to one raw value per record (None = missing);
    ``groups`` gives each record's group; ``weights`` each signal's weight (0 or absent = unused).
    """
    n = len(groups)
    total = np.zeros(n)
    weight_sum = np.zeros(n)
    group_of = np.asarray(groups)
    for name, raw in signals.items():
        weight = float(weights.get(name, 0.0))
        if weight <= 0:
            continue
        sign = 1.0 if HIGHER_IS_BETTER[name] else -1.0
        for group in np.unique(group_of):
            members = [i for i in np.flatnonzero(group_of == group) if raw[i] is not None and np.isfinite(raw[i])]
            if not members:
                continue
            ranks = percentile_ranks([sign * float(raw[i]) for i in members])
            total[members] += weight * ranks
            weight_sum[members] += weight
    return np.where(weight_sum > 0, total / np.maximum(weight_sum, 1e-12), 0.5)
