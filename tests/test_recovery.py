"""Parameter recovery by the flow from noisy synthetic data and a start 50 % off.

The reference is statistics, not a stored answer: the estimate must lie within the noise,
i.e. every parameter's error within 3 Cramer-Rao standard errors (|z| <= 3), and the fit
must explain the data at least as well as the true parameters do (the MLE's loss is at
most the loss at the truth)."""

import numpy as np
import pytest

from modopt.cli import _recovery_problem
from modopt.systems.recovery import recover


def test_toggle_switch_parameters_are_recovered_within_the_noise():
    problem = _recovery_problem("toggle_switch")
    summary = recover(problem, np.linspace(0.25, 10.0, 20), noise=0.05, start_offset=0.5,
                      seed=0, mass=1e-3, s1=40.0, gtol=1e-6, action=True)
    assert summary["converged"], summary["result"]
    # The action of the flow's path (an ODE module, forward sensitivities) bounds the
    # decrease of the loss, which the flow's own loss history gives independently.
    path = summary["action"]
    decrease = summary["history"]["loss"][0] - summary["loss"]
    assert path["action"] - path["action_gap"] == pytest.approx(decrease, rel=1e-8)
    assert 0 <= path["action_gap"] <= 0.05 * path["action"]
    starts = [row["start"] / row["truth"] for row in summary["parameters"].values()]
    np.testing.assert_allclose(np.abs(np.array(starts) - 1), 0.5)
    assert summary["loss"] <= summary["loss_at_truth"]
    assert summary["max_abs_z"] <= 3.0, summary["parameters"]


def test_index_one_dae_circuit_parameters_are_recovered_within_the_noise():
    problem = _recovery_problem("tanh_node_circuit")
    summary = recover(problem, np.linspace(0.25, 6.0, 15), noise=0.05, start_offset=0.5,
                      seed=0, mass=1e-3, s1=40.0, gtol=1e-6)
    assert summary["converged"], summary["result"]
    assert summary["loss"] <= summary["loss_at_truth"]
    assert summary["max_abs_z"] <= 3.0, summary["parameters"]
