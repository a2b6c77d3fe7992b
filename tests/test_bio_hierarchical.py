"""Hierarchical optimisation (`modopt.bio.ProfiledPetab`): which parameters are profiled
out, the profiled values against a numerical minimisation of the full objective over
them (scipy), derivatives against central differences, jit/vmap, and `fit_petab`."""

import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import assert_compiles_once_under_jit_and_vmaps
from scipy.optimize import least_squares, minimize

from modopt.bio import ProfiledPetab, fit_petab, load_petab
from modopt.bio.hierarchical import automatic_kinds, find_inner_parameters, profiled

DATA = Path(__file__).parent / "data"
BENCHMARKS = DATA / "petab"
MODEL = DATA / "petab-test-suite/v1.0.0/sbml/0001/_model.xml"  # A <-> B, k1, k2, a0, b0

# observable: (formula, noise, transformation, distribution, observableParameters,
# noiseParameters). Expected: s_rel a relative scaling, s_abs an absolute one, sd_log a
# normal noise level (log10 data), sd_lap a Laplace one; sigma_rel shares its rows with
# s_rel, sd_abs with s_abs, s1 with s2 (two scalings of one row), off is an offset and
# k1 a model parameter: those stay fitted.
OBSERVABLES = {
    "obs_rel": ("observableParameter1_obs_rel * A",
                "noiseParameter1_obs_rel * noiseParameter2_obs_rel", "lin", "normal",
                "s_rel", "s_rel;sigma_rel"),
    "obs_abs": ("s_abs * B", "sd_abs", "lin", "normal", "", ""),
    "obs_log": ("A + B", "noiseParameter1_obs_log", "log10", "normal", "", "sd_log"),
    "obs_lap": ("A", "0.5 * sd_lap", "lin", "laplace", "", ""),
    "obs_two": ("s1 * s2 * A", "0.1", "lin", "normal", "", ""),
    "obs_off": ("off + B", "0.1", "lin", "normal", "", ""),
    "obs_k": ("k1 * A", "0.1", "lin", "normal", "", ""),
}
TRUTH = {"k1": 0.8, "k2": 0.6, "s_rel": 3.0, "sigma_rel": 0.05, "s_abs": 0.4, "sd_abs": 0.02,
         "sd_log": 0.03, "sd_lap": 0.1, "s1": 2.0, "s2": 1.5, "off": 0.2}
TIMES = np.linspace(0.0, 10.0, 11)


def _write_problem(folder: Path, measurements: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(MODEL, folder / "model.xml")
    pd.DataFrame({"conditionId": ["c0"]}).to_csv(folder / "conditions.tsv", sep="\t",
                                                 index=False)
    pd.DataFrame([{"observableId": k, "observableFormula": v[0], "noiseFormula": v[1],
                   "observableTransformation": v[2], "noiseDistribution": v[3]}
                  for k, v in OBSERVABLES.items()]).to_csv(folder / "observables.tsv",
                                                           sep="\t", index=False)
    rows = [{"observableId": k, "simulationConditionId": "c0", "time": t,
             "observableParameters": v[4], "noiseParameters": v[5]}
            for k, v in OBSERVABLES.items() for t in TIMES]
    table = pd.DataFrame(rows)
    table.insert(3, "measurement", measurements)
    table.to_csv(folder / "measurements.tsv", sep="\t", index=False)
    parameters = [{"parameterId": "a0", "parameterScale": "lin", "lowerBound": 0,
                   "upperBound": 10, "nominalValue": 1.0, "estimate": 0},
                  {"parameterId": "b0", "parameterScale": "lin", "lowerBound": 0,
                   "upperBound": 10, "nominalValue": 0.0, "estimate": 0}]
    parameters += [{"parameterId": k, "parameterScale": "log10", "lowerBound": 1e-3,
                    "upperBound": 1e3, "nominalValue": v, "estimate": 1}
                   for k, v in TRUTH.items()]
    pd.DataFrame(parameters).to_csv(folder / "parameters.tsv", sep="\t", index=False)
    (folder / "problem.yaml").write_text(yaml.safe_dump({
        "format_version": 1, "parameter_file": "parameters.tsv",
        "problems": [{"condition_files": ["conditions.tsv"],
                      "measurement_files": ["measurements.tsv"],
                      "observable_files": ["observables.tsv"], "sbml_files": ["model.xml"]}]}))
    return folder / "problem.yaml"


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """The problem above with data simulated at `TRUTH` plus noise (seed 0)."""
    folder = tmp_path_factory.mktemp("hierarchical")
    count = len(OBSERVABLES) * len(TIMES)
    draft = load_petab(_write_problem(folder / "draft", np.ones(count)))
    clean = np.asarray(draft.simulations())
    noise = np.random.default_rng(0).normal(0.0, 0.05, count)
    return load_petab(_write_problem(folder / "data", clean * np.exp(noise) + 0.01))


def test_inner_parameters_follow_the_rules(synthetic):
    inner = {c.parameter_id: c for c in find_inner_parameters(synthetic)}
    assert sorted(inner) == ["s_abs", "s_rel", "sd_lap", "sd_log"]
    assert (inner["s_rel"].kind, inner["s_rel"].relative) == ("scaling", True)
    assert (inner["s_abs"].kind, inner["s_abs"].relative) == ("scaling", False)
    assert (inner["sd_log"].kind, inner["sd_log"].distribution) == ("noise", "normal")
    assert (inner["sd_lap"].kind, inner["sd_lap"].distribution) == ("noise", "laplace")
    assert len(inner["s_rel"].rows) == len(TIMES)
    profiled_problem = ProfiledPetab(synthetic)
    assert set(profiled_problem.x_ids) == set(synthetic.x_ids) - set(inner)


@pytest.mark.parametrize("name, expected, automatic", [
    ("Boehm_JProteomeRes2014", {"sd_pSTAT5A_rel", "sd_pSTAT5B_rel", "sd_rSTAT5A_rel"},
     ("scaling",)),  # three noise levels, each of one observable
    ("Bruno_JExpBot2016", set(), ("scaling",)),
    ("Elowitz_Nature2000", {"sigma"}, ("scaling", "noise")),
    ("Fiedler_BMCSystBiol2016", {f"s_{o}_{day}_gel{g}" for o in ("pErk", "pMek")
                                 for day in ("20140430", "20140505") for g in (1, 2)},
     ("scaling",)),
    ("Perelson_Science1996", {"sd_task0_model0_perelson1_V"}, ("scaling", "noise")),
])
def test_inner_parameters_of_the_benchmark_problems(name, expected, automatic):
    problem = load_petab(BENCHMARKS / name / f"{name}.yaml")
    assert {c.parameter_id for c in find_inner_parameters(problem)} == expected
    assert automatic_kinds(problem) == automatic
    # Fiedler's noise is relative to its scalings, which are profiled: sigma stays fitted.
    assert profiled(problem) is problem if not expected else isinstance(
        profiled(problem), ProfiledPetab)


def _outer_points(problem, count, seed):
    rng = np.random.default_rng(seed)
    return rng.uniform(problem.lower, problem.upper, (count, len(problem.x_ids)))


KIND_SETS = [("scaling", "noise"), ("scaling",), ("noise",)]


@pytest.mark.parametrize("kinds", KIND_SETS)
def test_profiled_values_are_the_minimum_over_the_inner_parameters(synthetic, kinds):
    """At random outer parameters, the profiled nllh is the full nllh at `complete`, and
    no point that scipy's Powell finds from several inner starts is lower."""
    view = profiled(synthetic, kinds)
    inner = view.inner_positions
    bounds = list(zip(synthetic.lower[inner], synthetic.upper[inner], strict=True))
    for x in _outer_points(view, 3, 1):
        full = np.asarray(view.complete(x))
        value = float(view.nllh(x))
        np.testing.assert_allclose(float(synthetic.nllh(full)), value, rtol=1e-12)

        def over_inner(z, full=full):
            point = full.copy()
            point[inner] = z
            return float(synthetic.nllh(point))

        for start in np.random.default_rng(2).uniform(-2, 2, (3, len(inner))):
            found = minimize(over_inner, start, method="Powell", bounds=bounds,
                             options={"xtol": 1e-10, "ftol": 1e-13, "maxfev": 20000})
            assert found.fun >= value - 1e-7
        # And the profiled point itself is a minimum: scipy does not move from it.
        polished = minimize(over_inner, full[inner], method="Powell", bounds=bounds,
                            options={"xtol": 1e-10, "ftol": 1e-13})
        assert polished.fun >= value - 1e-9


@pytest.mark.parametrize("kinds", KIND_SETS)
def test_profiled_derivatives_match_central_differences(synthetic, kinds):
    view = profiled(synthetic, kinds)
    x = jnp.asarray(_outer_points(view, 1, 3)[0])
    outputs = jax.jit(view._residuals)
    gradient = jax.jit(jax.jacfwd(view.nllh))(x)
    jacobian = jax.jit(jax.jacfwd(view._residuals))(x)
    # The nllh here is ~1e5 (noise levels far from the data's): a step of 1e-5 keeps the
    # rounding error of its differences (1e-16 * nllh / h) below the tolerance.
    h = 1e-5
    for i in range(len(x)):
        e = jnp.zeros_like(x).at[i].set(h)
        difference = (view.nllh(x + e) - view.nllh(x - e)) / (2 * h)
        np.testing.assert_allclose(gradient[i], difference, rtol=1e-5, atol=1e-6)
        column = (outputs(x + e) - outputs(x - e)) / (2 * h)
        np.testing.assert_allclose(jacobian[:, i], column, rtol=1e-4, atol=1e-6)


def test_the_metric_holds_the_profiled_noise_and_keeps_the_gradient(synthetic):
    """The Jacobian of the outputs whose ``J^T J`` is the metric (`_fisher_outputs`) is
    the full problem's with the profiled noise levels held at their values and the
    scalings following x (central differences of the full problem's outputs); the
    gradient of the loss through it is the profiled nllh's (central differences), as
    the nllh is stationary in the noise levels."""
    view = ProfiledPetab(synthetic)
    x = jnp.asarray(_outer_points(view, 1, 3)[0])
    jacobian = np.asarray(jax.jit(jax.jacfwd(view._fisher_outputs))(x))
    noise = view.inner_positions[~view._is_scaling]
    assert noise.size and view._is_scaling.any()  # both kinds are exercised
    held_at = np.asarray(view.complete(x))[noise]

    def held(y):
        return synthetic._fisher_outputs(view.complete(y).at[noise].set(held_at))

    count = len(synthetic.measurements)
    outputs = np.asarray(view._fisher_outputs(x))
    loss_gradient = jacobian[:count].T @ outputs[:count] + jacobian[count:].sum(0) / np.sqrt(2)
    h = 1e-6
    for i in range(len(x)):
        e = jnp.zeros_like(x).at[i].set(h)
        column = (held(x + e) - held(x - e)) / (2 * h)
        np.testing.assert_allclose(jacobian[:, i], column, rtol=1e-4, atol=1e-6)
        difference = (view.nllh(x + e) - view.nllh(x - e)) / (2 * h)
        np.testing.assert_allclose(loss_gradient[i], difference, rtol=1e-5, atol=1e-6)


def test_profiled_objective_compiles_once_inside_the_users_jit_and_vmaps(synthetic):
    view = ProfiledPetab(synthetic)
    x = jnp.asarray(view.x_nominal)
    assert_compiles_once_under_jit_and_vmaps(view.nllh, x, rtol=1e-10)
    assert view.nllh(x.astype(jnp.float32)).dtype == jnp.float32


def test_bad_input_is_a_clear_error(synthetic):
    view = ProfiledPetab(synthetic)
    with pytest.raises(ValueError, match="profiled out"):
        view.nllh(jnp.zeros(len(synthetic.x_ids)))
    bruno = load_petab(BENCHMARKS / "Bruno_JExpBot2016/Bruno_JExpBot2016.yaml")
    with pytest.raises(ValueError, match="no scaling or noise parameter"):
        ProfiledPetab(bruno)
    with pytest.raises(ValueError, match="kinds must be among"):
        profiled(synthetic, ("offset",))
    for bad in ("noise", ("scaling", "sigma"), 1):
        with pytest.raises(ValueError, match="hierarchical must be a bool, 'auto' or a tuple"):
            fit_petab(synthetic, 2, hierarchical=bad)


def test_a_subset_of_kinds_profiles_only_those_and_auto_leaves_several_noise_levels(
        synthetic):
    scalings, noise = profiled(synthetic, ("scaling",)), profiled(synthetic, ("noise",))
    assert sorted(c.parameter_id for c in scalings.inner) == ["s_abs", "s_rel"]
    assert sorted(c.parameter_id for c in noise.inner) == ["sd_lap", "sd_log"]
    assert profiled(synthetic, ()) is synthetic
    assert profiled(synthetic, ("noise", "scaling")) is profiled(synthetic)  # made once
    # Two noise levels, each of some rows: "auto" leaves them fitted.
    assert automatic_kinds(synthetic) == ("scaling",)
    fit = fit_petab(synthetic, 1, iterations=2, escape=None, progress=False)
    assert sorted(fit.info["profiled"]) == ["s_abs", "s_rel"]
    assert fit.x.shape == (1, len(synthetic.x_ids))


def test_fit_reaches_the_least_squares_optimum_and_reports_all_parameters(synthetic):
    """Four starts with profiling: every result holds all parameters, its nllh is the full
    problem's there, and the best equals scipy's trf on the full problem from the truth
    (an independent optimum)."""
    truth = jnp.asarray(synthetic.x_nominal)
    jacobian = jax.jit(jax.jacfwd(synthetic._residuals))
    reference = least_squares(lambda x: np.asarray(synthetic.residuals(x)), truth,
                              jac=lambda x: np.asarray(jacobian(x)),
                              bounds=(synthetic.lower, synthetic.upper), method="trf",
                              xtol=1e-12, ftol=1e-12, gtol=1e-12)
    best_known = float(synthetic.nllh(reference.x))
    fit = fit_petab(synthetic, 4, iterations=60, escape=None, batch_size=1, progress=False,
                    seed=1, hierarchical=True)
    assert fit.x.shape == (4, len(synthetic.x_ids)) and fit.x_ids == synthetic.x_ids
    assert sorted(fit.info["profiled"]) == ["s_abs", "s_rel", "sd_lap", "sd_log"]
    for x, value in zip(fit.x, fit.nllh, strict=True):
        np.testing.assert_allclose(float(synthetic.nllh(x)), value, rtol=1e-9)
    assert fit.best_nllh <= best_known + 1e-4
