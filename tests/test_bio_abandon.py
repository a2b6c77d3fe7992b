"""`EarlyAbandon`: the rule worked out by hand, the steps' scheduler stopping exactly
the start that cannot catch up, and the plateau escape scanning abandoned starts (scripted
runners in place of the compiled functions)."""

from collections import namedtuple
from types import SimpleNamespace

import numpy as np
import pytest

import modopt.bio.fit as fit_module
from modopt.bio import EarlyAbandon, PlateauEscape, fit_petab
from modopt.bio.batch_sizes import BatchSizeChooser


def test_the_rule_extrapolates_the_last_gain_over_the_chunks_left():
    rule = EarlyAbandon(factor=10.0, margin=2.0)
    value = np.array([-10.5, -10.5, 10.0, -10.5, -10.5, np.nan])
    previous = np.array([-10.0, np.inf, 50.0, -10.5, -10.5, -5.0])
    # -10.5 - 10 * 3 * 0.5 = -25.5 > -60 + 2: abandoned; no previous chunk yet: not;
    # 10 - 10 * 3 * 40 far below: not; no gain: abandoned; no chunk left: not; NaN: not.
    chunks_left = np.array([3, 3, 3, 1, 0, 3])
    np.testing.assert_array_equal(rule.hopeless(value, previous, -60.0, chunks_left),
                                  [True, False, False, True, False, False])
    # Within reach of the best: -10.5 - 10 * 3 * 0.5 = -25.5 <= -26 + 2.
    assert not rule.hopeless(value[:1], previous[:1], -26.0, chunks_left[:1])[0]


@pytest.mark.parametrize("bad", [dict(factor=0.0), dict(margin=-1.0)])
def test_bad_settings_are_value_errors(bad):
    with pytest.raises(ValueError, match="EarlyAbandon"):
        EarlyAbandon(**bad)


# Every step accepted, the norms above gtol: only the scheduler can end a start early.
State = namedtuple("State", ["undamped_norm2", "riemannian_norm2", "accepted", "count"])

# nllh after each chunk, per start (start i has x = i): 0 reaches the best fast, 1 creeps
# far above it, 2 falls from far above in big steps.
SCRIPT = {0: [100.0, -50.0, -60.0, -60.0, -60.0],
          1: [-10.0, -10.5, -11.0, -11.5, -12.0],
          2: [50.0, 10.0, -40.0, -59.0, -59.5]}


def _scripted_call(runners, name, *args):
    if name == "init":
        batch = np.asarray(args[0])
        n = batch.shape[0]
        return State(np.full(n, np.inf), np.full(n, np.inf), np.ones(n, bool),
                     np.zeros(n, np.int32))
    x, state = np.asarray(args[0]), args[1]
    count = np.asarray(state.count) + 1
    value = np.array([SCRIPT[int(round(xi[0]))][c - 1] for xi, c in zip(x, count)])
    n = x.shape[0]
    return x, State(np.ones(n), np.ones(n), np.ones(n, bool), count), value


def test_the_scheduler_abandons_the_start_that_cannot_catch_up(monkeypatch):
    monkeypatch.setattr(fit_module, "_call", _scripted_call)
    x0 = np.arange(3.0)[:, None]
    options = dict(iterations=5, chunk=1, gtol=1e-6, progress=False, began=0.0)
    x, value, converged, history, broken, abandoned = fit_module._steps_in_batches(
        {}, x0, BatchSizeChooser([1]), abandon=EarlyAbandon(), **options)
    # Start 1, after its second chunk: -10.5 - 10 * 3 * 0.5 = -25.5 > -60 + 2.
    np.testing.assert_array_equal(abandoned, [False, True, False])
    np.testing.assert_array_equal(value, [-60.0, -10.5, -59.5])
    assert np.isnan(history[1, 2:]).all() and not np.isnan(history[2]).any()
    # Start 0 stops by the fit's own test (no change over its fourth chunk).
    np.testing.assert_array_equal(converged, [True, False, False])
    assert not broken.any()
    _, value, _, _, _, abandoned = fit_module._steps_in_batches(
        {}, x0, BatchSizeChooser([1]), abandon=None, **options)
    assert not abandoned.any() and value[1] == -12.0


def _plateau_call(runners, name, x):
    """A 2-parameter objective: flat along the second parameter's kernel direction, 10
    above zero where it is positive, 0 elsewhere; the first parameter is identifiable."""
    x = np.asarray(x)
    if name == "fisher":
        return np.broadcast_to(np.diag([1.0, 0.0]), (x.shape[0], 2, 2))
    return np.where(x[:, 1] > 0, 10.0, 0.0)


def test_the_escape_scans_abandoned_starts_but_not_those_still_moving(monkeypatch):
    monkeypatch.setattr(fit_module, "_call", _plateau_call)
    refitted = []

    def fit_starts(x0):
        refitted.append(np.array(x0))
        count = len(x0)
        return (x0, _plateau_call(None, "nllh", x0), np.ones(count, bool),
                np.zeros((count, 1)), np.zeros(count, bool), np.zeros(count, bool))

    x = np.array([[0.0, 0.5]] * 3)
    no = np.zeros(3, bool)
    # Start 0 was abandoned, 1 converged, 2 ran out of iterations still moving.
    abandoned, stationary = np.array([True, False, False]), np.array([False, True, False])
    problem = SimpleNamespace(lower=np.array([-1.0, -1.0]), upper=np.array([1.0, 1.0]))
    x, value, stationary, _, _, abandoned, escapes = fit_module._escape_plateaus(
        PlateauEscape(rounds=1), {}, problem, fit_starts, x, np.full(3, 10.0), stationary,
        np.zeros((3, 1)), no, abandoned, False)
    np.testing.assert_array_equal(escapes, [1, 1, 0])
    np.testing.assert_array_equal(value, [0.0, 0.0, 10.0])
    assert len(refitted) == 1 and np.all(refitted[0][:, 1] <= 0)
    assert not abandoned.any() and stationary[:2].all()


def test_fit_petab_rejects_an_abandon_that_is_not_an_early_abandon():
    from pathlib import Path

    from modopt.bio import load_petab

    perelson = Path(__file__).parent / "data/petab/Perelson_Science1996/Perelson_Science1996.yaml"
    with pytest.raises(ValueError, match="abandon must be an EarlyAbandon or None"):
        fit_petab(load_petab(perelson), 2, abandon=10.0)
