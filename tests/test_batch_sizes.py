"""`BatchSizeChooser`: tries every size, then uses the cheapest per start and looks at
the others again after an amount of work that grows with their cost (expected choices
worked out by hand)."""

import pytest

from modopt.bio.batch_sizes import BatchSizeChooser


def test_every_size_is_tried_largest_first_then_the_cheapest_per_start_is_used():
    chooser = BatchSizeChooser([1, 8], explore_after=16)
    assert chooser.next() == 8
    chooser.record(8, seconds=8.0, starts=8)       # 1 s per start
    assert chooser.next() == 1
    chooser.record(1, seconds=0.5, starts=1)       # 0.5 s per start
    assert chooser.seconds_per_start == {8: 1.0, 1: 0.5}
    # 8 is looked at again once 16 * 8 * (1.0 / 0.5) start-calls have run since it was
    # last seen (the 1 start of the call above counts).
    for _ in range(254):
        assert chooser.next() == 1
        chooser.record(1, seconds=0.5, starts=1)
    assert chooser.next() == 1
    chooser.record(1, seconds=0.5, starts=1)
    assert chooser.next() == 8
    assert chooser.calls == {8: 1, 1: 256}


def test_the_choice_follows_the_cost_as_it_moves():
    chooser = BatchSizeChooser([8, 1], explore_after=16)
    chooser.record(8, seconds=4.0, starts=8)       # 0.5 s per start
    chooser.record(1, seconds=1.0, starts=1)       # 1 s per start
    assert chooser.next() == 8
    # a new measurement moves the estimate by starts / (starts + 4) of the way
    chooser.record(8, seconds=28.0, starts=8)      # 3.5 s per start: 0.5 + 2/3 * 3
    assert chooser.seconds_per_start[8] == pytest.approx(2.5)
    assert chooser.next() == 1
    chooser.record(1, seconds=6.0, starts=1)       # 1 + 1/5 * 5 = 2 s per start
    assert chooser.seconds_per_start[1] == pytest.approx(2.0)
    assert chooser.next() == 1


def test_one_size_is_always_that_size():
    chooser = BatchSizeChooser([4, 4])
    for _ in range(100):
        assert chooser.next() == 4
        chooser.record(4, seconds=1.0, starts=3)
