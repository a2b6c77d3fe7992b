"""Multi-start PEtab fitting when starts fail or share a batch: a start that raises inside
the batch (steps and flow), and the batch of slots against one batch of all starts. Apart
from tests/test_bio_fit.py so that pytest-xdist runs the two files side by side.

Reference: the best nllh published for Perelson with the noise estimated (222.28,
pyPESTO + AMICI + fides; shared/data/README.md)."""

from pathlib import Path

import numpy as np
import pytest

from modopt.bio import fit_petab, load_petab

PERELSON = Path(__file__).parent / "data/petab/Perelson_Science1996/Perelson_Science1996.yaml"


@pytest.mark.parametrize("method", ["steps", "flow"])
def test_a_start_that_raises_inside_the_batch_is_marked_failed_and_the_others_go_on(
        monkeypatch, method):
    """Lineax raises (rather than returning NaN) when one start's ODE state overflows in a
    tangent solve; in a vmapped batch that would end every start. Here the compiled
    runner raises whenever the batch holds the poisoned start."""
    import modopt.bio.fit as fit_module

    problem = load_petab(PERELSON)
    starts = np.asarray(problem.x_nominal)[None] + np.array([[0.2], [0.1], [-0.1]])
    poisoned = starts[1]
    real_call = fit_module._call

    def call(runners, name, *args):
        if name in ("chunk", "flow") and np.any(np.all(np.asarray(args[0]) == poisoned, 1)):
            raise RuntimeError("INTERNAL: lineax raised in a tangent solve")
        return real_call(runners, name, *args)

    monkeypatch.setattr(fit_module, "_call", call)
    fit = fit_petab(problem, starts, method=method, iterations=40, progress=False)
    assert fit.status[1] == "failed" and np.isnan(fit.nllh[1])
    assert fit.status[0] != "failed" and fit.status[2] != "failed"
    assert abs(np.nanmin(fit.nllh) - 222.28) < 0.01


def test_starts_fitted_in_a_small_batch_of_slots_end_as_in_one_batch():
    """The slot scheduler (5 starts through 2 slots: a start enters when another one is
    done) gives every start the fit it gets in one batch of all five, history included."""
    problem = load_petab(PERELSON)
    offsets = np.linspace(-2.0, 2.0, 5)[:, None] * np.array([1.0, -0.5, 0.7])
    starts = np.asarray(problem.x_nominal)[None] + offsets
    together = fit_petab(problem, starts, iterations=60, batch_size=None, progress=False)
    slots = fit_petab(problem, starts, iterations=60, batch_size=2, progress=False)
    assert together.info["batch_size"] == 5 and slots.info["batch_size"] == 2
    assert slots.status == together.status
    assert np.isnan(together.history).any()  # some are done before others: slots refill
    np.testing.assert_allclose(slots.nllh, together.nllh, rtol=1e-9)
    np.testing.assert_allclose(slots.x, together.x, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(slots.history, together.history, rtol=1e-9)
    with pytest.raises(ValueError, match="batch_size must be positive"):
        fit_petab(problem, starts, batch_size=0)
