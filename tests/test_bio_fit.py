"""Multi-start PEtab fitting and the SBML recovery example.

References: the best nllh published for Perelson with the noise estimated (222.28,
pyPESTO + AMICI + fides; shared/data/README.md), and statistics for the recovery (errors
within 3 Cramer-Rao standard errors, the fit's loss at most the truth's)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import diffrax
import numpy as np
import pytest

import modopt.bio.fit as fit_module
from modopt.bio import fit_petab, load_petab
from modopt.cli import _recovery_problem, main
from modopt.systems.recovery import recover

DATA = Path(__file__).parent / "data"
PERELSON = DATA / "petab/Perelson_Science1996/Perelson_Science1996.yaml"


def test_fit_petab_command_shards_starts_marks_blow_ups_and_finds_the_published_best(tmp_path):
    env = dict(os.environ, XLA_FLAGS="")
    run = subprocess.run(
        [sys.executable, "-m", "modopt.cli", "fit-petab", str(PERELSON), "--starts", "8",
         "--iterations", "40", "--devices", "4", "--batch-size", "4", "--max-steps", "100",
         "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=900, env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "4 device(s)" in run.stdout
    out = tmp_path / "fit-petab-Perelson_Science1996-steps"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["devices"] == 4
    assert abs(summary["best_nllh"] - 222.28) < 0.01, summary
    # Latin-hypercube start 2 (seed 0) has c and delta ~1e4: the ODE is so stiff there
    # that the solver hits its 100-step limit (a result code, not NaN parameters). It is
    # marked, and the other starts run to the end.
    assert summary["status_counts"].get("failed_at_start", 0) >= 1, summary
    assert sum(summary["status_counts"].values()) == 8
    for name in ("starts.csv", "starts.md", "waterfall.png", "best_fit.png"):
        assert (out / name).stat().st_size > 0


@pytest.mark.parametrize("profile, expected", [
    (["--profile"], []), (["--profile", "noise"], ["sd_task0_model0_perelson1_V"])])
def test_fit_petab_command_profiles_the_kinds_it_is_given(tmp_path, profile, expected):
    main(["fit-petab", str(PERELSON), "--starts", "2", "--iterations", "2", "--no-escape",
          "--out", str(tmp_path), *profile])
    out = tmp_path / "fit-petab-Perelson_Science1996-steps"
    assert json.loads((out / "summary.json").read_text())["profiled"] == expected
    with pytest.raises(SystemExit, match="'auto' alone or kinds"):
        main(["fit-petab", str(PERELSON), "--profile", "auto", "noise"])


def test_fit_petab_rejects_bad_arguments():
    problem = load_petab(PERELSON)
    with pytest.raises(ValueError, match="method must be"):
        fit_petab(problem, 2, method="newton")
    with pytest.raises(ValueError, match=r"starts must have shape \(n, 3\)"):
        fit_petab(problem, np.zeros((2, 4)))
    with pytest.raises(ValueError, match="retries must be an int >= 0"):
        fit_petab(problem, 2, retries=-1)
    with pytest.raises(ValueError, match="ode_solver must be a diffrax solver"):
        fit_petab(problem, 2, method="flow", ode_solver="rk45")
    with pytest.raises(ValueError, match="stepsize_controller must be a diffrax"):
        fit_petab(problem, 2, method="flow", stepsize_controller=1e-4)


def test_the_flow_integrates_with_the_solver_it_is_given():
    """Bosh3 at rtol 1e-6 and the default Ros2 both take the flow from a start 0.5 away
    (in log10) to the published best of Perelson (222.28), and the fits differ: each
    used its own solver."""
    problem = load_petab(PERELSON)
    start = np.asarray(problem.x_nominal)[None] + 0.5
    options = dict(method="flow", iterations=400, escape=None, progress=False)
    default = fit_petab(problem, start, **options)
    bosh = fit_petab(problem, start, ode_solver=diffrax.Bosh3(),
                     stepsize_controller=diffrax.PIDController(rtol=1e-6, atol=1e-9),
                     **options)
    for fit in (default, bosh):
        assert fit.status == ["converged"]
        assert abs(fit.nllh[0] - 222.28) < 0.01
    assert not np.array_equal(default.history, bosh.history)


def test_fit_runners_are_kept_on_the_problem_rebuilt_for_new_bounds_and_freed_with_it():
    import gc
    import weakref

    from modopt.bio.fit import _runners

    def build_and_drop():
        # In a helper, so that no frame of the test (whose locals pytest or JAX may
        # snapshot) still holds the problem after it returns.
        problem = load_petab(PERELSON)
        settings = ("steps", 100, 20, 1e-3, 1.0, 60.0, 1e-6, 0)
        first = _runners(problem, *settings)
        assert _runners(problem, *settings) is first
        problem.upper = np.asarray(problem.upper, float) - 0.1
        assert _runners(problem, *settings) is not first
        return weakref.ref(problem)

    held = build_and_drop()
    gc.collect()
    assert held() is None


def test_repressilator_parameters_are_recovered_from_protein_traces():
    problem = _recovery_problem("repressilator")
    summary = recover(problem, np.linspace(5.0, 200.0, 40), noise=0.05, noise_floor=1.0,
                      start_offset=0.2, seed=0, mass=1e-3, s1=40.0, gtol=1e-6,
                      max_steps=1000)
    assert summary["converged"], summary["result"]
    assert summary["loss"] <= summary["loss_at_truth"]
    assert summary["max_abs_z"] <= 3.0, summary["parameters"]


def test_steps_end_at_a_first_order_point_on_a_bound_and_warm_up_without_running():
    """The bounds (`modopt.Box`): with an upper bound below the free optimum of `c`, the
    steps end at a KKT point on a bound: the gradient (forward mode, computed apart from
    the fit) pushes out of the box on every parameter at a bound and is stationary in
    the others, and scipy's bounded trf started from the end does not lower the nllh."""
    import jax
    from scipy.optimize import least_squares

    from modopt.bio.fit import _runners

    free = load_petab(PERELSON)
    start = np.asarray(free.x_nominal)[None] + 0.3
    unbounded = fit_petab(free, start, iterations=200, hierarchical=False, progress=False)
    problem = load_petab(PERELSON)
    problem.upper = np.array(problem.upper, float)
    problem.upper[0] = unbounded.x[0, 0] - 0.3
    start[0, 0] = problem.upper[0] - 0.5
    # Every parameter fitted: the path to the bound of c that this test sets up is the
    # full problem's (with the noise level profiled out this start ends on delta's bound).
    options = dict(iterations=200, hierarchical=False)
    fit_petab(problem, start, compile_only=True, **options)
    settings = ("steps", 200, 20, 1e-3, 1.0, 60.0, 1e-6, 0)
    compiled = dict(_runners(problem, *settings)["compiled"])
    assert compiled  # the warm-up compiled the runners that the fit uses
    fit = fit_petab(problem, start, progress=False, **options)
    assert _runners(problem, *settings)["compiled"] == compiled

    x = fit.x[0]
    assert fit.status == ["converged"]
    gradient = np.asarray(jax.jacfwd(problem._nllh)(x))
    held = ((np.abs(x - problem.lower) < 1e-12) & (gradient > 1e-3)) | (
        (np.abs(x - problem.upper) < 1e-12) & (gradient < -1e-3))
    assert held.any()  # the nllh would fall beyond a bound
    # In the others the Gauss-Newton decrement g^T (J^T J)^-1 g (a dense solve; twice
    # the decrease one more step would give) is below the fit's gtol, 1e-6, with margin.
    jac = np.asarray(jax.jacfwd(problem._residuals)(x))[:, ~held]
    free_gradient = gradient[~held]
    assert free_gradient @ np.linalg.solve(jac.T @ jac, free_gradient) < 2e-6
    polished = least_squares(
        jax.jit(problem._residuals), x, jac=jax.jit(jax.jacfwd(problem._residuals)),
        bounds=(problem.lower, problem.upper), method="trf")
    assert float(problem._nllh(polished.x)) > fit.nllh[0] - 1e-4
    assert fit.nllh[0] > unbounded.nllh[0] + 1.0  # the bound costs likelihood


@pytest.mark.parametrize("method", ["steps", "flow"])
def test_a_start_that_raises_inside_the_batch_is_marked_failed_and_the_others_go_on(
        monkeypatch, method):
    """Lineax raises (rather than returning NaN) when one start's ODE state overflows in a
    tangent solve; in a vmapped batch that would end every start. Here the compiled
    runner raises whenever the batch holds the poisoned start."""
    problem = load_petab(PERELSON)
    starts = np.asarray(problem.x_nominal)[None] + np.array([[0.2], [0.1], [-0.1]])
    poisoned = starts[1]
    real_call = fit_module._call

    def call(runners, name, *args):
        if name in ("chunk", "flow") and np.any(np.all(np.asarray(args[0]) == poisoned, 1)):
            raise RuntimeError("INTERNAL: lineax raised in a tangent solve")
        return real_call(runners, name, *args)

    monkeypatch.setattr(fit_module, "_call", call)
    # With the noise level fitted too, Ros2's Gauss-Newton W is far from the flow's
    # Jacobian at these starts and 40 steps do not reach the optimum (docs/bio.md).
    solver = {"ode_solver": diffrax.Tsit5()} if method == "flow" else {}
    fit = fit_petab(problem, starts, method=method, iterations=40, hierarchical=False,
                    progress=False, **solver)
    assert fit.status[1] == "failed"
    # It raised at once, so it keeps its start and the nllh there.
    np.testing.assert_array_equal(fit.x[1], poisoned)
    assert fit.nllh[1] == pytest.approx(float(problem.nllh(poisoned)), rel=1e-9)
    assert fit.status[0] != "failed" and fit.status[2] != "failed"
    assert abs(np.nanmin(fit.nllh) - 222.28) < 0.01


def test_a_start_of_the_steps_that_raises_later_keeps_its_progress(monkeypatch):
    """A start whose second chunk raises keeps the parameters of its first chunk and
    their nllh (which the problem itself confirms), below the nllh at its start."""
    problem = load_petab(PERELSON)
    starts = np.asarray(problem.x_nominal)[None] + np.array([[0.1], [0.6]])
    tracked = {"x": starts[1], "calls": 0}
    real_call = fit_module._call

    def call(runners, name, *args):
        rows = np.flatnonzero(np.all(np.asarray(args[0]) == tracked["x"], 1))
        if name != "chunk" or not rows.size:
            return real_call(runners, name, *args)
        tracked["calls"] += 1
        if tracked["calls"] >= 2:
            raise RuntimeError("INTERNAL: lineax raised in a tangent solve")
        result = real_call(runners, name, *args)
        tracked["x"] = np.asarray(result[0])[rows[0]]
        return result

    monkeypatch.setattr(fit_module, "_call", call)
    fit = fit_petab(problem, starts, method="steps", iterations=60, chunk=3,
                    batch_size=1, hierarchical=False, progress=False)
    assert fit.status[1] == "failed" and fit.status[0] != "failed"
    assert not np.array_equal(fit.x[1], starts[1])
    np.testing.assert_array_equal(fit.x[1], tracked["x"])
    assert fit.nllh[1] == pytest.approx(float(problem.nllh(fit.x[1])), rel=1e-9)
    assert fit.nllh[1] < float(problem.nllh(starts[1])) - 1e-3


def test_a_start_of_the_steps_that_meets_gtol_stops_inside_its_chunk():
    """From the nominal parameters Perelson's steps meet gtol within a few chunks: the
    chunk where they do ends early (count below the chunk length), with the undamped
    norm (`StepState.undamped_norm2`) below gtol, while a far start in the same batch runs every
    iteration of every chunk."""
    problem = load_petab(PERELSON)
    runners = fit_module._runners(problem, "steps", 100, 20, 1e-3, 1.0, 60.0, 1e-6, 0)
    x = np.stack([np.asarray(problem.x_nominal), np.asarray(problem.x_nominal) + 1.5])
    state = fit_module._fresh_states(runners, x, 2)
    for _ in range(5):
        before = np.asarray(state.count)
        x, state, _ = fit_module._call(runners, "chunk", *fit_module._slot_batch(
            np.asarray(x), state, np.arange(2)))
        ran = np.asarray(state.count) - before
        assert ran[1] == 20
        if ran[0] < 20:
            break
    assert ran[0] < 20, "the start at the nominal parameters never met gtol"
    assert float(state.undamped_norm2[0]) < 1e-6


def test_a_start_whose_rejected_step_promised_less_than_gtol_has_converged():
    """With the benchmark's ODE tolerances (rtol 1e-6) Perelson has a point near its
    upper bound where the undamped norm stays above gtol (1.5e-5) but the nllh cannot
    be lowered within the accuracy of the solves: a step promising less than gtol is
    rejected. The steps stop there inside the first chunk instead of rejecting steps to
    its end; scipy's trf polishing from there (the reference) gains less than 1e-4."""
    import jax
    from scipy.optimize import least_squares

    from modopt.bio.hierarchical import kinds_to_profile, profiled

    problem = load_petab(PERELSON, rtol=1e-6, atol=1e-8)
    objective = profiled(problem, kinds_to_profile(problem, "auto"))
    runners = fit_module._runners(objective, "steps", 100, 20, 1e-3, 1.0, 60.0, 1e-6, 0)
    x = np.array([[-0.01427985, 4.88598027]])  # where a start of the benchmark stalled
    state = fit_module._fresh_states(runners, x, 1)
    x, state, value = fit_module._call(runners, "chunk",
                                       *fit_module._slot_batch(x, state, np.arange(1)))
    assert int(state.count[0]) < 20
    assert float(state.undamped_norm2[0]) > 1e-6 and not bool(state.accepted[0])
    assert bool(fit_module._stationary(state, 1e-6)[0])
    polished = least_squares(
        jax.jit(objective._residuals), np.asarray(x[0]),
        jac=jax.jit(jax.jacfwd(objective._residuals)),
        bounds=(objective.lower, objective.upper), method="trf", ftol=1e-12, xtol=1e-12)
    assert float(value[0]) - float(objective._nllh(polished.x)) < 1e-4


def test_a_start_whose_nllh_cannot_be_evaluated_is_failed_after_one_chunk(monkeypatch):
    """A start whose chunk ends with a NaN nllh (its parameters cannot be evaluated, as
    with a log observable of a state the solve left just below zero) is marked failed
    after that chunk, keeps the parameters it had before it (here its start, though the
    chunk moved) and the nllh there, and costs no further chunks; the other start goes
    on."""
    problem = load_petab(PERELSON)
    starts = np.asarray(problem.x_nominal)[None] + np.array([[0.2], [0.6]])
    poisoned, calls = starts[1], []
    real_call = fit_module._call

    def call(runners, name, *args):
        result = real_call(runners, name, *args)
        rows = np.flatnonzero(np.all(np.asarray(args[0]) == poisoned, 1))
        if name != "chunk" or not rows.size:
            return result
        calls.append(rows)
        x, state, value = result
        return x, state, value.at[rows].set(np.nan)

    monkeypatch.setattr(fit_module, "_call", call)
    fit = fit_petab(problem, starts, method="steps", iterations=100, batch_size=1,
                    hierarchical=False, escape=None, abandon=None, progress=False)
    assert len(calls) == 1
    assert fit.status[1] == "failed" and fit.status[0] == "converged"
    np.testing.assert_array_equal(fit.x[1], poisoned)
    assert fit.nllh[1] == pytest.approx(float(problem.nllh(poisoned)), rel=1e-9)


def test_starts_fitted_in_small_or_chosen_batches_end_as_in_one_batch():
    """The scheduler (5 starts through batches of 2, or of 5 and 1 as ``"auto"`` picks: a
    start enters when another one is done) gives every start the fit it gets in one
    batch of all five, history included."""
    problem = load_petab(PERELSON)
    offsets = np.linspace(-2.0, 2.0, 5)[:, None] * np.array([1.0, -0.5, 0.7])
    starts = np.asarray(problem.x_nominal)[None] + offsets
    # Every parameter fitted (profiled, Perelson's starts all converge in one chunk) and
    # no start abandoned (which would depend on the order in which the starts finish).
    options = dict(iterations=60, hierarchical=False, abandon=None, progress=False)
    together = fit_petab(problem, starts, batch_size=None, **options)
    assert together.info["batch_size"] == 5
    assert np.isnan(together.history).any()  # some are done before others: slots refill
    for batch_size in (2, "auto"):
        fit = fit_petab(problem, starts, batch_size=batch_size, **options)
        assert fit.info["batch_size"] == batch_size
        assert fit.status == together.status
        np.testing.assert_allclose(fit.nllh, together.nllh, rtol=1e-9)
        np.testing.assert_allclose(fit.x, together.x, rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(fit.history, together.history, rtol=1e-9)
    assert set(fit.info["batch_calls"]) == {5, 1}  # "auto" tried both
    for bad in (0, "fast", 2.5):
        with pytest.raises(ValueError, match="batch_size must be positive, None or 'auto'"):
            fit_petab(problem, starts, batch_size=bad)
