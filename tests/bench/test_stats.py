"""bench/_stats.py: the headline statistic every benchmark reports (no timing is asserted here).

The comparisons are built from given samples, so the arithmetic is checked against values worked
out by hand and against numpy; the alternation is checked from the order of the calls.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench._stats import Comparison, MachineLoad, Sample, compare, headline_table, quartiles, write_results


def comparison(reference_s: list[float], candidate_s: list[float], items: int = 10) -> Comparison:
    c = Comparison("ref", "cand", items, 1)
    c.reference_samples = [Sample(s, 2 * s) for s in reference_s]
    c.candidate_samples = [Sample(s, 3 * s) for s in candidate_s]
    return c


def test_ratio_of_medians_is_not_the_median_of_ratios():
    c = comparison([1.0, 2.0, 10.0], [2.0, 1.0, 4.0])
    s = c.summary(ratio_at_most_one=True)
    assert s["ratio_of_medians"] == pytest.approx(2.0 / 2.0)
    assert s["per_pass_ratios"] == pytest.approx([0.5, 2.0, 2.5])
    assert s["per_pass_ratio_median"] == pytest.approx(2.0)  # what a median of paired ratios would have claimed
    assert (s["per_pass_ratio_min"], s["per_pass_ratio_max"]) == pytest.approx((0.5, 2.5))
    assert s["impossible_pairs"] == 2  # ratios above 1 for an efficiency
    assert s["candidate_items_per_s"] == pytest.approx(10 / 2.0)
    assert s["candidate_cpu_s_per_item"] == pytest.approx(3 * 2.0 / 10)
    assert s["reference_cpu_s_per_item"] == pytest.approx(2 * 2.0 / 10)
    assert s["cpu_ratio_of_medians"] == pytest.approx((2 * 2.0) / (3 * 2.0))


@pytest.mark.parametrize("values", [[3.0], [1.0, 5.0], [4.0, 1.0, 3.0, 2.0], list(np.random.default_rng(0).random(11))])
def test_quartiles_equal_numpy(values):
    assert quartiles(values) == pytest.approx(tuple(np.percentile(values, [25, 50, 75])))


def test_noise_is_the_larger_relative_iqr():
    c = comparison([1.0, 1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 2.0, 2.0, 3.0])
    s = c.summary()
    assert s["reference_seconds"]["relative_iqr"] == 0
    assert s["noise_relative_iqr"] == pytest.approx((2.0 - 2.0) / 2.0)
    c = comparison([1.0, 1.0, 2.0, 3.0, 3.0], [1.0] * 5)
    assert c.summary()["noise_relative_iqr"] == pytest.approx((3.0 - 1.0) / 2.0)


def test_compare_alternates_the_order_and_excludes_warmup():
    calls = []
    result = compare(("r", lambda: calls.append("r")), ("c", lambda: calls.append("c")), passes=4, warmup_passes=2,
                     between=lambda i: calls.append(f"b{i}"), verbose=False)
    assert calls == ["r", "c", "r", "c", "b0", "r", "c", "b1", "c", "r", "b2", "r", "c", "b3", "c", "r"]
    assert result.passes == 4 and len(result.reference_samples) == 4
    assert all(s.wall_s >= 0 and s.cpu_s >= 0 for s in result.reference_samples + result.candidate_samples)


def test_compare_needs_a_pass():
    with pytest.raises(ValueError):
        compare(("r", lambda: None), ("c", lambda: None), passes=0)


def test_machine_load_and_results_files(tmp_path):
    load = MachineLoad().start()
    sum(range(10_000))
    info = load.stop()
    assert set(info) >= {"load_average_before", "load_average_after", "others_cores", "own_cpu_s", "wall_s"}
    c = comparison([1.0, 2.0, 3.0], [2.0, 2.0, 2.0])
    lines = headline_table([c.summary()], unit="tiles", item="tile")
    assert lines[0].startswith("| candidate | reference | ratio of medians") and "tiles/s" in lines[0]
    assert "**1.000**" in lines[2]
    json_path, md_path = write_results("x", {"summary": c.summary()}, "# x", folder=tmp_path)
    assert json.loads(json_path.read_text())["summary"]["ratio_of_medians"] == 1.0
    assert md_path.read_text() == "# x\n"
