"""`PlateauEscape`: the near-kernel of a Fisher matrix and the line through the box (closed
forms), and on Bruno_JExpBot2016 a start on the plateau of a fast rate constant, where the
steps alone stop, led to the published best nllh (-46.688, shared/data/README.md)."""

from pathlib import Path

import numpy as np
import pytest

from modopt.bio import PlateauEscape, fit_petab, load_petab

BRUNO = Path(__file__).parent / "data/petab/Bruno_JExpBot2016/Bruno_JExpBot2016.yaml"
BRUNO_BEST = -46.688


def test_directions_span_the_eigenvectors_below_the_tolerance():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    fisher = q @ np.diag([0.0, 1e-9, 1.0, 10.0]) @ q.T
    kernel = PlateauEscape(null_tolerance=1e-6).directions(fisher)
    assert kernel.shape == (4, 2)
    np.testing.assert_allclose(kernel @ kernel.T, q[:, :2] @ q[:, :2].T, atol=1e-10)
    assert PlateauEscape(null_tolerance=1e-6).directions(np.eye(3)).shape == (3, 0)


def test_line_spans_the_chord_of_the_box_and_reach_where_it_is_open():
    escape = PlateauEscape(points=5, reach=2.0)
    lower, upper = np.array([0.0, -1.0]), np.array([4.0, 1.0])
    line = escape.line(np.array([1.0, 0.5]), np.array([1.0, 1.0]) / np.sqrt(2), lower, upper)
    # x + t (1, 1)/sqrt(2) leaves the box at x1 = 0 and at x2 = 1: the chord from
    # (0, -0.5) to (1.5, 1).
    np.testing.assert_allclose(line[0], [0.0, -0.5], atol=1e-12)
    np.testing.assert_allclose(line[-1], [1.5, 1.0], atol=1e-12)
    np.testing.assert_allclose(np.diff(line, axis=0), np.full((4, 2), 0.375), atol=1e-12)
    open_line = escape.line(np.zeros(2), np.array([0.0, 1.0]), np.full(2, -np.inf),
                            np.full(2, np.inf))
    np.testing.assert_allclose(open_line[:, 1], np.linspace(-2, 2, 5))
    np.testing.assert_allclose(open_line[:, 0], 0.0)


def test_minor_components_are_left_out_of_the_scan():
    # The kernel vector of Elowitz_Nature2000 at a stalled fit: mostly one parameter,
    # with 1 % in another that sits on its bound. The scan crosses the box along the
    # first and leaves the second where it is.
    lower, upper = np.full(2, -5.0), np.full(2, 3.0)
    x, e = np.array([-4.13, -5.0]), np.array([-1.0, 0.01]) / np.hypot(1.0, 0.01)
    line = PlateauEscape(points=9, minor=0.01).line(x, e, lower, upper)
    np.testing.assert_allclose(sorted([line[0, 0], line[-1, 0]]), [-5.0, 3.0], atol=1e-12)
    np.testing.assert_allclose(line[:, 1], -5.0)
    # Counting every component (the default), the second stops the chord at x: only the
    # short side, towards the first one's lower bound, is scanned.
    short = PlateauEscape(points=9).line(x, e, lower, upper)
    np.testing.assert_allclose([short[:, 0].min(), short[:, 0].max()], [-5.0, -4.13])


@pytest.mark.parametrize("bad", [dict(points=1), dict(null_tolerance=0.0),
                                 dict(null_tolerance=1.0), dict(min_gain=-1.0),
                                 dict(rounds=0), dict(reach=0.0),
                                 dict(minor=1.0), dict(minor=-0.1)])
def test_bad_settings_are_value_errors(bad):
    with pytest.raises(ValueError, match="PlateauEscape"):
        PlateauEscape(**bad)


def test_fit_petab_rejects_an_escape_that_is_not_a_plateau_escape():
    with pytest.raises(ValueError, match="escape must be a PlateauEscape or None"):
        fit_petab(load_petab(BRUNO), 2, escape="scan")


def test_a_start_on_the_plateau_of_a_fast_rate_reaches_the_best_only_with_the_escape():
    problem = load_petab(BRUNO, rtol=1e-6, atol=1e-8, max_steps=20_000)
    start = np.array(problem.x_nominal, float)
    assert abs(problem.nllh(start) - BRUNO_BEST) < 1e-3
    start[problem.x_ids.index("k5")] = 2.5  # k5 = 10^2.5: its reaction is instantaneous
    local = fit_petab(problem, start[None], iterations=100, escape=None, progress=False)
    # The steps stop on the plateau: the Fisher metric's kernel is k5, and the fit is
    # stationary there, 900 above the best.
    assert local.status == ["converged"] and local.nllh[0] > 870, (local.nllh, local.status)
    fit = fit_petab(problem, start[None], iterations=100, progress=False)
    assert fit.info["escapes"] == [1]
    assert abs(fit.nllh[0] - BRUNO_BEST) < 1e-3, fit.nllh
    assert fit.x[0, problem.x_ids.index("k5")] < 0
    assert fit.history.shape[1] > local.history.shape[1]
