"""The batches a heatmap stream scores its tiles in (engine.heatmap.inference.batch_plan)."""

import pytest

from engine.heatmap.inference import FIRST_BATCH, batch_plan


@pytest.mark.parametrize("n", [0, 1, 3, 4, 5, 36, 37, 100, 1000])
@pytest.mark.parametrize("batch_size", [1, 4, 32, 256])
def test_every_tile_once_in_order_and_no_batch_over_the_size(n, batch_size):
    plan = batch_plan(n, batch_size)
    covered = [i for a, b in plan for i in range(a, b)]
    assert covered == list(range(n))
    assert all(0 < b - a <= batch_size for a, b in plan)


def test_a_short_first_batch_then_full_ones():
    plan = batch_plan(101, 32)
    assert plan[0] == (0, FIRST_BATCH) and FIRST_BATCH < 32
    assert [b - a for a, b in plan[1:]] == [32, 32, 32, 101 - FIRST_BATCH - 96]
