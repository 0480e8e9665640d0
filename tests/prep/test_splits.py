"""Group-aware stratified splitting."""

from __future__ import annotations

from collections import Counter

import pytest

from cxrtool.prep.splits import assign_splits, connected_units, crossing_groups


class TestConnectedUnits:
    def test_transitive_links(self):
        # 0-1 share a patient, 1-2 share a duplicate group, 3 is alone, 4-0 share a patient.
        units = connected_units([["p:a"], ["p:a", "d:1"], ["d:1"], [], ["p:a"]])
        assert units[0] == units[1] == units[2] == units[4]
        assert units[3] != units[0]

    def test_no_keys_means_singletons(self):
        assert len(set(connected_units([[], [], []]))) == 3


class TestAssignSplits:
    def _data(self, n_units: int = 300):
        strata, units = [], []
        for u in range(n_units):
            label = "rare" if u % 10 == 0 else "common"
            for _ in range(1 + u % 3):
                strata.append([label])
                units.append(u)
        return strata, units

    def test_units_stay_whole(self):
        strata, units = self._data()
        splits = assign_splits(strata, units, {"train": 0.7, "val": 0.15, "test": 0.15}, seed=1)
        per_unit: dict[int, set[str]] = {}
        for u, s in zip(units, splits):
            per_unit.setdefault(u, set()).add(s)
        assert all(len(s) == 1 for s in per_unit.values())

    def test_fractions_and_strata_close_to_target(self):
        strata, units = self._data()
        splits = assign_splits(strata, units, {"train": 0.7, "val": 0.15, "test": 0.15}, seed=0)
        n = Counter(splits)
        assert abs(n["val"] / len(splits) - 0.15) < 0.02
        assert abs(n["test"] / len(splits) - 0.15) < 0.02
        rare = Counter(s for s, st in zip(splits, strata) if st == ["rare"])
        total_rare = sum(rare.values())
        assert abs(rare["test"] / total_rare - 0.15) < 0.05

    def test_seed_is_deterministic_and_matters(self):
        strata, units = self._data()
        f = {"train": 0.8, "val": 0.2}
        assert assign_splits(strata, units, f, seed=3) == assign_splits(strata, units, f, seed=3)
        assert assign_splits(strata, units, f, seed=3) != assign_splits(strata, units, f, seed=4)

    def test_zero_fraction_gets_nothing(self):
        strata, units = self._data(50)
        assert set(assign_splits(strata, units, {"train": 1.0, "val": 0.0})) == {"train"}

    def test_rejects_bad_fractions(self):
        with pytest.raises(ValueError):
            assign_splits([["a"]], [0], {"train": 0.0})


def test_crossing_groups():
    assert crossing_groups(["a", "a", "b", ""], ["train", "test", "train", "val"]) == {"a": {"train", "test"}}
    assert crossing_groups(["", ""], ["train", "test"]) == {}
