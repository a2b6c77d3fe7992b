"""PEtab import: the PEtab test suite's expected chi2, llh and simulations, the benchmark
collection's nominal likelihoods, petab's own likelihood code, finite differences, and
clear errors for malformed problems."""

import shutil
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import assert_compiles_once_under_jit_and_vmaps

from modopt.bio import PetabError, load_petab
from modopt.bio.likelihood import negative_log_likelihood

DATA = Path(__file__).parent / "data"
SUITE = DATA / "petab-test-suite/v1.0.0/sbml"
BENCHMARKS = DATA / "petab"

# llh at the nominal parameters, from the collection's own simulated data
# (shared/data/README.md); Fiedler's fresh simulation gives 58.586, Perelson's noise is a
# placeholder (sd = 1e5) and its value is what that placeholder gives.
NOMINAL_LLH = {
    "Boehm_JProteomeRes2014": (-138.222, 1e-3),
    "Bruno_JExpBot2016": (46.688, 1e-3),
    "Elowitz_Nature2000": (63.203, 1e-3),
    "Fiedler_BMCSystBiol2016": (58.584, 3e-3),
    "Perelson_Science1996": (-432.0385, 1e-3),
    "Rahman_MBS2016": (-21.154, 1e-3),
}


def _petab():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import petab.v1 as petab
    return petab


@pytest.mark.parametrize("case", sorted(p.name for p in SUITE.iterdir() if p.is_dir()))
def test_petab_test_suite_case(case):
    folder = SUITE / case
    solution = yaml.safe_load((folder / f"_{case}_solution.yaml").read_text())
    problem = load_petab(folder / f"_{case}.yaml")
    result = problem.evaluate()
    assert abs(float(result["chi2"]) - solution["chi2"]) < solution["tol_chi2"]
    assert abs(-float(result["nllh"]) - solution["llh"]) < solution["tol_llh"]
    expected = pd.read_csv(folder / solution["simulation_files"][0], sep="\t")
    np.testing.assert_allclose(np.asarray(result["simulations"]), expected["simulation"],
                               atol=solution["tol_simulations"])


@pytest.mark.parametrize("name", sorted(NOMINAL_LLH))
def test_benchmark_nominal_likelihood(name):
    problem = load_petab(BENCHMARKS / name / f"{name}.yaml")
    result = problem.evaluate()
    expected, tolerance = NOMINAL_LLH[name]
    assert abs(-float(result["nllh"]) - expected) < tolerance
    # petab's own likelihood code on our simulations: an independent check of the
    # formulas, placeholders and noise models.
    petab = _petab()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = petab.Problem.from_yaml(str(BENCHMARKS / name / f"{name}.yaml"))
        simulation = raw.measurement_df.rename(columns={"measurement": "simulation"})
        simulation["simulation"] = np.asarray(result["simulations"])
        reference = petab.calculate_llh(raw.measurement_df, simulation, raw.observable_df,
                                        raw.parameter_df)
    np.testing.assert_allclose(-float(result["nllh"]), reference, rtol=1e-10)


@pytest.mark.parametrize("distribution", ["normal", "laplace"])
@pytest.mark.parametrize("transformation", ["lin", "log", "log10"])
def test_noise_models_match_petab(distribution, transformation):
    petab = _petab()
    rng = np.random.default_rng(0)
    m, h, sigma = rng.uniform(0.5, 3, 5), rng.uniform(0.5, 3, 5), rng.uniform(0.1, 1, 5)
    ours = negative_log_likelihood(jnp.asarray(m), jnp.asarray(h), jnp.asarray(sigma),
                                   transformation, distribution)
    reference = [-petab.calculate_single_llh(a, b, transformation, distribution, s)
                 for a, b, s in zip(m, h, sigma)]
    np.testing.assert_allclose(ours, reference, rtol=1e-12)


def _boehm():
    return load_petab(BENCHMARKS / "Boehm_JProteomeRes2014/Boehm_JProteomeRes2014.yaml")


def test_nllh_gradient_matches_central_differences_and_residuals_sum_to_nllh():
    problem = _boehm()
    rng = np.random.default_rng(1)
    x = jnp.asarray(problem.x_nominal + rng.uniform(-0.1, 0.1, len(problem.x_ids)))
    # The default sensitivity is forward mode (few parameters, many residuals).
    grad = jax.jit(jax.jacfwd(problem.nllh))(x)
    h = 1e-5
    for i in (0, 3, 8):
        e = jnp.zeros_like(x).at[i].set(h)
        fd = (problem.nllh(x + e) - problem.nllh(x - e)) / (2 * h)
        np.testing.assert_allclose(grad[i], fd, rtol=1e-5, atol=1e-6)
    # 0.5 |r|^2 differs from nllh by a constant, also where the noise is estimated.
    constant = problem.residual_constant()
    np.testing.assert_allclose(0.5 * jnp.sum(problem.residuals(x) ** 2) + constant,
                               problem.nllh(x), rtol=1e-10)


def test_objective_compiles_once_inside_the_users_jit_and_vmaps():
    problem = _boehm()
    x = jnp.asarray(problem.x_nominal)
    assert_compiles_once_under_jit_and_vmaps(problem.nllh, x, rtol=1e-8)


def _copy_case(tmp_path, case="0001"):
    folder = tmp_path / case
    shutil.copytree(SUITE / case, folder)
    return folder


def test_missing_column_is_a_clear_error(tmp_path):
    folder = _copy_case(tmp_path)
    table = pd.read_csv(folder / "_observables.tsv", sep="\t")
    table.drop(columns=["noiseFormula"]).to_csv(folder / "_observables.tsv", sep="\t",
                                                index=False)
    with pytest.raises(PetabError, match=r"observable table lacks the column\(s\) "
                                         r"\['noiseFormula'\]"):
        load_petab(folder / "_0001.yaml")


def test_observable_naming_an_unknown_species_is_a_clear_error(tmp_path):
    folder = _copy_case(tmp_path)
    table = pd.read_csv(folder / "_observables.tsv", sep="\t")
    table.loc[0, "observableFormula"] = "C_unknown + A"
    table.to_csv(folder / "_observables.tsv", sep="\t", index=False)
    with pytest.raises(PetabError, match="observable 'obs_a' uses 'C_unknown'"):
        load_petab(folder / "_0001.yaml")


def test_undefined_condition_and_bad_scale_are_clear_errors(tmp_path):
    folder = _copy_case(tmp_path)
    table = pd.read_csv(folder / "_measurements.tsv", sep="\t")
    table["simulationConditionId"] = "c_missing"
    table.to_csv(folder / "_measurements.tsv", sep="\t", index=False)
    with pytest.raises(PetabError, match="c_missing"):
        load_petab(folder / "_0001.yaml")
    folder = _copy_case(tmp_path / "second")
    table = pd.read_csv(folder / "_parameters.tsv", sep="\t")
    table["parameterScale"] = "ln"
    table.to_csv(folder / "_parameters.tsv", sep="\t", index=False)
    with pytest.raises(PetabError, match="parameterScale 'ln'"):
        load_petab(folder / "_0001.yaml")
