"""Group-aware stratified splitting, shared by ``prep nih`` and ``prep folder``.

Images that share a patient, or that are near-duplicates of each other, must land on the same
side of every split, otherwise the test set leaks into training. Items are therefore first
merged into *units* (connected components over any shared key), and whole units are assigned
to splits so that each split gets its target fraction of every label (stratum) as closely as
whole units allow.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence


def connected_units(keys: Sequence[Iterable[str]]) -> list[int]:
    """Unit number per item: items sharing any key (transitively) get the same unit.

    Callers namespace their keys (``"patient:…"``, ``"dup:…"``) so different kinds never collide;
    items with no keys are units of their own.
    """
    parent = list(range(len(keys)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_owner: dict[str, int] = {}
    for i, item_keys in enumerate(keys):
        for key in item_keys:
            owner = first_owner.setdefault(key, i)
            ri, ro = find(i), find(owner)
            if ri != ro:
                parent[max(ri, ro)] = min(ri, ro)
    roots = [find(i) for i in range(len(keys))]
    numbering: dict[int, int] = {}
    return [numbering.setdefault(r, len(numbering)) for r in roots]


def assign_splits(
    strata: Sequence[Sequence[str]],
    units: Sequence[int],
    fractions: Mapping[str, float],
    *,
    seed: int = 0,
) -> list[str]:
    """Split name per item; every unit goes whole to one split.

    Parameters
    ----------
    strata
        Labels of each item to stratify on (one for multiclass, the findings for multilabel).
    units
        Unit number per item (from :func:`connected_units`).
    fractions
        Target share of each split, e.g. ``{"train": .7, "val": .15, "test": .15}``; splits with
        share 0 receive nothing.
    seed
        Fixes the order in which equally large units are placed.

    Returns
    -------
    list[str]
        The split of each item, in input order.

    Notes
    -----
    Greedy in a seeded random order: each unit goes to the split whose relative deficit, summed
    over the unit's labels and the overall size, is largest. (Placing the largest units first
    balances image counts slightly better but leaves the small splits with mostly one-image
    patients, a different population; random order keeps patients representative.)
    Rare labels weigh more because the deficit is divided by the label's total, as in
    iterative stratification (Sechidis et al., ECML PKDD 2011).
    """
    total = sum(fractions.values())
    if total <= 0 or any(v < 0 for v in fractions.values()):
        raise ValueError(f"split fractions must be >= 0 and not all 0: {dict(fractions)}")
    target = {s: v / total for s, v in fractions.items() if v > 0}

    unit_items: dict[int, list[int]] = defaultdict(list)
    for i, u in enumerate(units):
        unit_items[u].append(i)
    unit_counts = {u: Counter(k for i in items for k in (strata[i] or [""])) for u, items in unit_items.items()}
    label_total: Counter = Counter()
    for c in unit_counts.values():
        label_total.update(c)
    n_total = len(units)

    order = list(unit_items)
    rng = random.Random(seed)
    rng.shuffle(order)

    have: dict[str, Counter] = {s: Counter() for s in target}
    size: Counter = Counter()
    result = [""] * n_total
    for u in order:
        n_u = len(unit_items[u])

        def score(s: str) -> float:
            labels = sum(
                c * (target[s] * label_total[k] - have[s][k]) / label_total[k] for k, c in unit_counts[u].items()
            )
            return labels + n_u * (target[s] * n_total - size[s]) / n_total

        best = max(target, key=lambda s: (score(s), rng.random()))
        have[best].update(unit_counts[u])
        size[best] += n_u
        for i in unit_items[u]:
            result[i] = best
    return result


def crossing_groups(groups: Sequence[str], splits: Sequence[str]) -> dict[str, set[str]]:
    """Groups (non-empty ids) found in more than one split: must be empty for a leak-free split."""
    seen: dict[str, set[str]] = defaultdict(set)
    for g, s in zip(groups, splits):
        if g:
            seen[g].add(s)
    return {g: s for g, s in seen.items() if len(s) > 1}
