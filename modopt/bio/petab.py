"""PEtab v1 problems as one pure JAX objective.

```python
problem = modopt.bio.load_petab("Boehm_JProteomeRes2014.yaml")
problem.nllh()            # at the nominal parameters
problem.nllh(x)           # x: the estimated parameters in their PEtab scales
```

At load time (NumPy, once) the tables become index arrays: for every simulation
condition, where each model input comes from (a number, or an entry of the parameter
vector); for every measurement, its condition, time, observable and placeholder values.
The objective is then one function of the scaled parameter vector ``x``: unscale, build
every condition's inputs, simulate all conditions with one compiled SBML model
(``vmap``), evaluate observable and noise formulas, and sum PEtab's exact negative
log-likelihood (`modopt.bio.likelihood`). It works under ``jit``, ``vmap`` and ``grad``.

Semantics (checked on the 18 cases of the PEtab test suite): parameter-table values
replace the SBML values; a condition-table value (number or parameter id) sets a
parameter, a compartment's initial size or a species' initial value (a concentration
unless the species has only substance units) and overrides its initial assignment; an
empty cell keeps the model's value. With a pre-equilibration condition the model is
first run to steady state, and the simulation starts from there except for the species
the simulation condition sets.
"""

from __future__ import annotations

import abc
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from .errors import PetabError
from .likelihood import DISTRIBUTIONS, TRANSFORMATIONS, negative_log_likelihood
from .likelihood import standardized_residual as _standardized
from .sbml import read_sbml

SIGMA_RESIDUAL_OFFSET = 60.0
"""``C`` in the noise residual ``sqrt(2 log sigma + C)``: real for sigma > exp(-30)."""

_REQUIRED = {
    "measurement": ("observableId", "simulationConditionId", "time", "measurement"),
    "observable": ("observableFormula", "noiseFormula"),
    "parameter": ("parameterScale", "lowerBound", "upperBound", "nominalValue", "estimate"),
}


def _petab():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import petab.v1 as petab
    except ImportError as error:  # pragma: no cover - depends on the installation
        raise ImportError("modopt.bio.load_petab needs petab: pip install 'modopt[bio]'") \
            from error
    return petab


def _is_empty(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or (
        isinstance(value, str) and not value.strip())


def _scale_code(scale: str, where: str) -> int:
    codes = {"lin": 0, "log": 1, "log10": 2}
    if scale not in codes:
        raise PetabError(f"{where}: parameterScale {scale!r} is not one of {list(codes)}")
    return codes[scale]


def _unscale(x, codes):
    return jnp.where(codes == 0, x, jnp.where(codes == 1, jnp.exp(x), 10.0**x))


def _scale(value: float, code: int) -> float:
    return [value, math.log(value) if value > 0 else -math.inf,
            math.log10(value) if value > 0 else -math.inf][code]


class _Sources:
    """Values that are numbers or entries of the linear parameter vector."""

    def __init__(self, parameter_ids):
        self.position = {pid: i for i, pid in enumerate(parameter_ids)}

    def encode(self, value, where: str) -> tuple[int, float]:
        if _is_empty(value):
            return -1, math.nan
        if isinstance(value, (int, float, np.number)):
            return -1, float(value)
        text = str(value).strip()
        try:
            return -1, float(text)
        except ValueError:
            pass
        if text not in self.position:
            raise PetabError(f"{where}: {text!r} is neither a number nor a parameter of "
                             "the parameter table")
        return self.position[text], math.nan


def _gather(index, constant, linear):
    return jnp.where(jnp.asarray(index) >= 0, linear[jnp.maximum(jnp.asarray(index), 0)],
                     jnp.asarray(constant, linear.dtype))


@dataclass(frozen=True)
class _Observable:
    observable_id: str
    transformation: str
    distribution: str
    formula: object  # compiled: (env dict of arrays) -> array
    noise: object
    expression: object  # the sympy expressions of the formula and of the noise
    noise_expression: object
    symbols: tuple[str, ...]
    noise_symbols: tuple[str, ...]
    rows: np.ndarray  # measurement rows of this observable
    placeholders: dict  # name -> (index (rows,), constant (rows,))


def _check_columns(problem, yaml_path) -> None:
    tables = {"measurement": problem.measurement_df, "observable": problem.observable_df,
              "parameter": problem.parameter_df}
    for table, columns in _REQUIRED.items():
        frame = tables[table]
        if frame is None:
            raise PetabError(f"{yaml_path}: the problem has no {table} table")
        present = set(frame.columns) | {frame.index.name}
        missing = [c for c in columns if c not in present]
        if missing:
            raise PetabError(f"{yaml_path}: the {table} table lacks the column(s) {missing}")


def _compile_formula(text: str, where: str):
    import sympy
    from petab.v1.math import sympify_petab

    try:
        expression = sympify_petab(str(text))
    except Exception as error:  # noqa: BLE001 - sympy raises many kinds
        raise PetabError(f"{where}: cannot parse the formula {text!r}: {error}") from None
    symbols = sorted(expression.free_symbols, key=lambda s: s.name)
    function = sympy.lambdify(symbols, expression, modules="jax")
    names = tuple(s.name for s in symbols)
    return (lambda env: function(*(env[n] for n in names))), names, expression


class AbstractPetabObjective(abc.ABC):
    """PEtab's objective, given the data and model outputs per observable (`_parts`).

    Final subclasses: `PetabProblem` (all estimated parameters) and
    `modopt.bio.ProfiledPetab` (scaling and noise parameters profiled out). They define
    `x_ids`, `x_nominal`, `lower`, `upper`, `measurements`, `yaml_path` and
    `_noise_is_estimated`; the methods here are pure functions of ``x`` (shape
    ``(len(x_ids),)``, scaled) that work under ``jit``, ``vmap`` and forward-mode autodiff.
    """

    @abc.abstractmethod
    def _parts(self, x) -> list:
        """``[(observable, measurement, simulation, sigma), ...]``, one per observable
        with measurements: the arrays over its measurement rows."""

    def _evaluate(self, name, x):
        x = self.x_nominal if x is None else x
        compiled = self.__dict__.setdefault("_compiled", {})
        function = compiled.get(name)
        if function is None:
            # One compiled function per quantity, reused for every x; inside a caller's
            # jit it is inlined, so it never stages anything of its own there.
            function = compiled[name] = jax.jit(getattr(self, f"_{name}"))
        return function(jnp.asarray(x))

    def nllh(self, x=None):
        """PEtab's negative log-likelihood at scaled parameters `x` (default: nominal)."""
        return self._evaluate("nllh", x)

    def llh(self, x=None):
        """``-nllh(x)``."""
        return -self.nllh(x)

    def chi2(self, x=None):
        """``sum(((f(m) - f(h)) / sigma)^2)``, PEtab's chi2."""
        return self._evaluate("chi2", x)

    def simulations(self, x=None):
        """The simulated observable per measurement row (PEtab's simulation table)."""
        return self._evaluate("simulations", x)

    def residuals(self, x=None):
        """Residuals ``r`` with ``0.5 |r|^2 = nllh + const`` (see `_residuals`)."""
        return self._evaluate("residuals", x)

    def evaluate(self, x=None) -> dict:
        """``{"nllh", "chi2", "simulations"}`` from one simulation (cheaper than three
        calls)."""
        return self._evaluate("summary", x)

    def _summary(self, x):
        nllh, chi2, simulations = 0.0, 0.0, jnp.zeros(self.measurements.shape)
        for o, m, h, sigma in self._parts(x):
            nllh = nllh + jnp.sum(negative_log_likelihood(m, h, sigma, o.transformation,
                                                          o.distribution))
            chi2 = chi2 + jnp.sum(_standardized(m, h, sigma, o.transformation) ** 2)
            simulations = simulations.astype(h.dtype).at[o.rows].set(h)
        return {"nllh": nllh, "chi2": chi2, "simulations": simulations}

    # Each is the summary's part; under jit XLA drops the parts not asked for.
    def _nllh(self, x):
        return self._summary(x)["nllh"]

    def _chi2(self, x):
        return self._summary(x)["chi2"]

    def _simulations(self, x):
        return self._summary(x)["simulations"]

    def _fisher_parts(self, x) -> list:
        """`_parts` as the metric sees them (see `_fisher_outputs`)."""
        return self._parts(x)

    def _residual_parts(self, parts, noise_term):
        z_parts, noise = [], []
        for o, m, h, sigma in parts:
            z = _standardized(m, h, sigma, o.transformation)
            if o.distribution == "laplace":
                z = jnp.sign(z) * jnp.sqrt(2 * jnp.abs(z))
            z_parts.append(z)
            noise.append(noise_term(sigma))
        return jnp.concatenate(z_parts + (noise if self._noise_is_estimated else []))

    def _residuals(self, x):
        """Residuals ``r`` with ``0.5 |r|^2 = nllh + const`` (the least-squares form).

        One standardised residual ``z = (f(m) - f(h)) / sigma`` per measurement
        (``sign(z) sqrt(2 |z|)`` for Laplace noise); when the noise depends on estimated
        parameters, also one ``sqrt(2 log sigma + C)`` per measurement
        (`SIGMA_RESIDUAL_OFFSET`), the trick AMICI uses for least-squares optimisers.
        """
        return self._residual_parts(
            self._parts(x), lambda sigma: jnp.sqrt(2 * jnp.log(sigma) + SIGMA_RESIDUAL_OFFSET))

    def _fisher_outputs(self, x):
        """``z`` then, when the noise is estimated, ``sqrt(2) log sigma`` per measurement.

        With ``nllh = 0.5 |z|^2 + sum(log sigma) + const``, the identity metric on these
        outputs gives ``J^T J`` = the Fisher information of the observables plus
        ``(2 + z^2)`` times that of ``log sigma`` (3 in expectation instead of 2): close to
        the Fisher information, unlike the ``sqrt(2 log sigma + C)`` residual, whose
        ``J^T J`` for the noise is about ``1 / C`` of it."""
        return self._residual_parts(self._fisher_parts(x),
                                    lambda sigma: math.sqrt(2.0) * jnp.log(sigma))

    def residual_constant(self):
        """``nllh(x) - 0.5 |residuals(x)|^2``, independent of ``x`` for normal noise."""
        return float(self.nllh() - 0.5 * jnp.sum(self.residuals() ** 2))


class PetabProblem(AbstractPetabObjective):
    """A PEtab problem as a JAX objective (made by `load_petab`).

    Attributes: `x_ids` (estimated parameters), `x_scales`, `lower`, `upper` and
    `x_nominal` (NumPy, in the parameters' scales), `model` (the `SBMLModel`),
    `condition_ids` (``(preequilibration or None, simulation)`` per simulated condition),
    `measurements` (the measured values).

    Methods are pure functions of ``x`` (scaled, shape ``(len(x_ids),)``) and work
    under ``jit`` and ``vmap``. With the default ``sensitivity="forward"`` differentiate
    them with ``jax.jacfwd``/``jax.jvp`` (the cheap direction for a few parameters and
    many residuals); load with ``sensitivity="reverse"`` for ``jax.grad``.

    **Arguments** (of `load_petab`): `solver` (default ``Kvaerno5()``), `rtol`, `atol`,
    `max_steps` (Diffrax's), `sensitivity` (``"forward"`` or ``"reverse"``).
    """

    def __init__(self, yaml_path, *, solver=diffrax.Kvaerno5(), rtol=1e-8, atol=1e-10,
                 max_steps=100_000, sensitivity="forward"):
        petab = _petab()
        yaml_path = Path(yaml_path)
        if not yaml_path.is_file():
            raise FileNotFoundError(f"load_petab: no PEtab yaml file at {yaml_path}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                problem = petab.Problem.from_yaml(str(yaml_path))
            except (KeyError, ValueError, FileNotFoundError, AssertionError) as error:
                raise PetabError(f"{yaml_path}: PEtab cannot read the problem: "
                                 f"{type(error).__name__}: {error}") from None
        _check_columns(problem, yaml_path)
        self.yaml_path = yaml_path
        self.solver, self.rtol, self.atol, self.max_steps = solver, rtol, atol, max_steps
        if sensitivity not in ("forward", "reverse"):
            raise ValueError(f"load_petab: sensitivity must be 'forward' or 'reverse', got "
                             f"{sensitivity!r}")
        self.sensitivity = sensitivity
        self.adjoint = (diffrax.ForwardMode() if sensitivity == "forward"
                        else diffrax.RecursiveCheckpointAdjoint())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._load(problem, petab, str(yaml_path))

    # ---------------------------------------------------------------- tables
    def _load(self, problem, petab, where):
        import libsbml

        parameters = problem.parameter_df
        self.parameter_ids = tuple(parameters.index)
        sources = _Sources(self.parameter_ids)
        codes = [_scale_code(str(parameters.loc[p, "parameterScale"]), f"{where}: parameter "
                             f"{p!r}") for p in self.parameter_ids]
        nominal = parameters["nominalValue"].astype(float).to_numpy()
        estimated = parameters["estimate"].astype(int).to_numpy() == 1
        self._codes = np.array(codes)
        self._nominal_linear = nominal
        self._estimated = np.flatnonzero(estimated)
        self.x_ids = tuple(self.parameter_ids[i] for i in self._estimated)
        self.x_scales = tuple(str(parameters.loc[p, "parameterScale"]) for p in self.x_ids)
        scaled = [lambda v, c=c: _scale(float(v), c) for c in codes]
        self.lower = np.array([scaled[i](parameters["lowerBound"].iloc[i])
                               for i in self._estimated])
        self.upper = np.array([scaled[i](parameters["upperBound"].iloc[i])
                               for i in self._estimated])
        self.x_nominal = np.array([scaled[i](nominal[i]) for i in self._estimated])
        if np.any(~np.isfinite(self.lower) | ~np.isfinite(self.upper) | (self.lower > self.upper)):
            raise PetabError(f"{where}: estimated parameters need finite bounds with "
                             "lowerBound <= upperBound in their scale")

        conditions = problem.condition_df
        measurements = problem.measurement_df.reset_index(drop=True)
        if "preequilibrationConditionId" not in measurements:
            measurements["preequilibrationConditionId"] = np.nan
        times = measurements["time"].astype(float).to_numpy()
        if not np.all(np.isfinite(times)):
            raise PetabError(f"{where}: steady-state measurements (time = inf) are not "
                             "supported")
        document = problem.sbml_model.getSBMLDocument()
        text = libsbml.writeSBMLToString(document)
        probe = read_sbml(text)
        model_ids = set(probe.defaults)
        condition_columns = [c for c in conditions.columns if c != "conditionName"]
        overridable = [c for c in condition_columns if c in model_ids]
        overridable += [p for p in self.parameter_ids
                        if p in probe.initial_assignments and p not in overridable]
        self.model = read_sbml(text, overridable=overridable)
        extra_columns = [c for c in condition_columns if c not in model_ids]

        keys = []
        for pre, sim in zip(measurements["preequilibrationConditionId"],
                            measurements["simulationConditionId"], strict=True):
            keys.append((None if _is_empty(pre) else str(pre), str(sim)))
        self.condition_ids = tuple(dict.fromkeys(keys))
        for pre, sim in self.condition_ids:
            for c in (pre, sim):
                if c is not None and c not in conditions.index:
                    raise PetabError(f"{where}: condition {c!r} is used in the measurement "
                                     "table but not defined in the condition table")
        key_index = {k: i for i, k in enumerate(self.condition_ids)}
        self._row_condition = np.array([key_index[k] for k in keys])
        self._grid = np.unique(times)
        self._row_time = np.searchsorted(self._grid, times)

        input_ids = tuple(self.model.defaults)
        def condition_inputs(condition):
            p_index, p_const, o_index, o_const, sets_state = [], [], [], [], []
            row = conditions.loc[condition] if condition is not None else None
            for mid in input_ids:
                default = self.model.defaults[mid]
                index, const = (sources.encode(mid, "") if mid in sources.position
                                else (-1, default))
                if mid in overridable:
                    # An overridable symbol: its initial value comes from O.
                    o = (index, const) if mid in sources.position else (-1, math.nan)
                    if row is not None and not _is_empty(row.get(mid)):
                        o = sources.encode(row[mid], f"{where}: condition {condition!r}, "
                                           f"column {mid!r}")
                    o_index.append(o[0])
                    o_const.append(o[1])
                p_index.append(index)
                p_const.append(const)
            for sid in self.model.state_ids:
                sets_state.append(row is not None and sid in row.index
                                  and not _is_empty(row[sid]))
            extra = [sources.encode(row[c] if row is not None else math.nan,
                                    f"{where}: condition {condition!r}, column {c!r}")
                     for c in extra_columns]
            return p_index, p_const, o_index, o_const, sets_state, extra

        def stack(which):
            tables = [condition_inputs(c) for c in which]
            arrays = [np.array([t[k] for t in tables]) for k in range(6)]
            for k in (0, 2):  # index arrays, also when a condition has no entries
                arrays[k] = arrays[k].astype(int).reshape(len(tables), -1)
            arrays[3] = arrays[3].astype(float).reshape(len(tables), -1)
            arrays[4] = arrays[4].astype(bool).reshape(len(tables), -1)
            return arrays

        sims = stack([sim for _, sim in self.condition_ids])
        pres = stack([pre for pre, _ in self.condition_ids])
        (self._p_index, self._p_const, self._o_index, self._o_const, self._sets_state,
         extra) = sims
        self._pre_p_index, self._pre_p_const, self._pre_o_index, self._pre_o_const = pres[:4]
        self._has_pre = np.array([pre is not None for pre, _ in self.condition_ids])
        self._extra = {c: (np.array([e[j][0] for e in extra], dtype=int).reshape(-1),
                           np.array([e[j][1] for e in extra], dtype=float).reshape(-1))
                       for j, c in enumerate(extra_columns)}
        self.measurements = measurements["measurement"].astype(float).to_numpy()
        self._measurement_times = times
        self._observables = self._load_observables(problem, measurements, sources,
                                                   extra_columns, where)
        self._noise_is_estimated = self._estimated_noise(sources)

    def _load_observables(self, problem, measurements, sources, extra_columns, where):
        petab = _petab()
        frame = problem.observable_df
        unknown = sorted(set(measurements["observableId"]) - set(frame.index))
        if unknown:
            raise PetabError(f"{where}: the measurement table uses observable(s) {unknown} "
                             "that the observable table does not define")
        model_symbols = set(self.model.symbols)
        known = model_symbols | set(self.parameter_ids) | set(extra_columns) | {"time"}
        observables = []
        for oid, row in frame.iterrows():
            rows = np.flatnonzero(measurements["observableId"].to_numpy() == oid)
            transformation = row.get("observableTransformation", "lin")
            transformation = "lin" if _is_empty(transformation) else str(transformation)
            distribution = row.get("noiseDistribution", "normal")
            distribution = "normal" if _is_empty(distribution) else str(distribution)
            if transformation not in TRANSFORMATIONS:
                raise PetabError(f"{where}: observable {oid!r}: observableTransformation "
                                 f"{transformation!r} is not one of {TRANSFORMATIONS}")
            if distribution not in DISTRIBUTIONS:
                raise PetabError(f"{where}: observable {oid!r}: noiseDistribution "
                                 f"{distribution!r} is not one of {DISTRIBUTIONS}")
            formula, symbols, expression = _compile_formula(
                row["observableFormula"], f"{where}: observable {oid!r}")
            noise, noise_symbols, noise_expression = _compile_formula(
                row["noiseFormula"], f"{where}: noise of observable {oid!r}")
            placeholders = {}
            for column, prefix in (("observableParameters", "observableParameter"),
                                   ("noiseParameters", "noiseParameter")):
                names = sorted({s for s in symbols + noise_symbols
                                if s.startswith(prefix) and s.endswith(f"_{oid}")})
                values = [petab.split_parameter_replacement_list(
                    measurements[column].iloc[r] if column in measurements else None)
                    for r in rows]
                for name in names:
                    k = int(name[len(prefix):-len(oid) - 1]) - 1
                    encoded = []
                    for r, entries in zip(rows, values, strict=True):
                        if k >= len(entries):
                            raise PetabError(
                                f"{where}: measurement row {r} of observable {oid!r} gives "
                                f"{len(entries)} {column}, the formula needs {name}")
                        encoded.append(sources.encode(entries[k], f"{where}: row {r} "
                                                      f"{column}"))
                    placeholders[name] = (np.array([e[0] for e in encoded], dtype=int),
                                          np.array([e[1] for e in encoded], dtype=float))
            for name in symbols + noise_symbols:
                if name not in known and name not in placeholders and name != oid:
                    raise PetabError(
                        f"{where}: observable {oid!r} uses {name!r}, which is not a model "
                        "species, compartment, parameter or reaction, not in the parameter "
                        "or condition table, and not a placeholder of this observable")
            observables.append(_Observable(oid, transformation, distribution, formula, noise,
                                           expression, noise_expression, symbols,
                                           noise_symbols, rows, placeholders))
        return observables

    def _estimated_noise(self, sources) -> bool:
        estimated = {self.parameter_ids[i] for i in self._estimated}
        for o in self._observables:
            if any(s in estimated or s in self.model.symbols for s in o.noise_symbols):
                return True
            for name, (index, _) in o.placeholders.items():
                if name.startswith("noiseParameter") and np.any(
                        np.isin(index, self._estimated)):
                    return True
        return False

    # ---------------------------------------------------------------- objective
    def linear_parameters(self, x=None):
        """All parameter-table values in linear scale (estimated ones from `x`)."""
        dtype = jnp.result_type(float)
        nominal = jnp.asarray(self._nominal_linear, dtype)
        if x is None:
            return nominal
        x = jnp.asarray(x)
        if x.shape != (len(self.x_ids),):
            raise ValueError(f"{self.yaml_path.name}: x must have shape ({len(self.x_ids)},) "
                             f"for the parameters {self.x_ids}, got {x.shape}")
        values = _unscale(x, jnp.asarray(self._codes[self._estimated]))
        return nominal.astype(x.dtype).at[self._estimated].set(values)

    def _inputs(self, linear, p_index, p_const, o_index, o_const):
        ids = tuple(self.model.defaults)
        ruled = set(self.model.assignment_rules) | set(self.model.initial_assignments)
        p = _gather(p_index, p_const, linear)
        o = _gather(o_index, o_const, linear)
        return ({k: p[..., i] for i, k in enumerate(ids) if k not in ruled},
                {k: o[..., i] for i, k in enumerate(self.model.overridable)})

    def simulate_conditions(self, x=None):
        """Simulate every condition on the union of measurement times.

        **Returns:** ``(values, result)``: ``{symbol: (conditions, times)}`` and a
        per-condition `modopt.RESULTS` code.
        """
        linear = self.linear_parameters(x)
        params, overrides = self._inputs(linear, self._p_index, self._p_const,
                                         self._o_index, self._o_const)
        options = dict(solver=self.solver, rtol=self.rtol, atol=self.atol,
                       max_steps=self.max_steps, adjoint=self.adjoint)
        grid = jnp.asarray(self._grid, linear.dtype)
        if self._has_pre.any():
            pre_params, pre_overrides = self._inputs(
                linear, self._pre_p_index, self._pre_p_const, self._pre_o_index,
                self._pre_o_const)
            steady, _ = jax.vmap(lambda p, o: self.model.steady_state(p, o, **options))(
                pre_params, pre_overrides)
            _, x0 = jax.vmap(self.model.initial)(params, overrides)
            keep = jnp.asarray(self._sets_state | ~self._has_pre[:, None])
            start = jnp.where(keep, x0, steady)
        else:
            start = None

        def one(p, o, x0):
            sim = self.model.simulate(grid, p, o, x0=x0, **options)
            return sim.values, sim.result

        return jax.vmap(one)(params, overrides, start)

    def _parts(self, x):
        return list(self._per_observable(x))

    def _per_observable(self, x, values=None):
        """Yield ``(observable, measurement, simulation, sigma)`` arrays per observable.

        `values`: the simulation of every condition (`simulate_conditions`) when it is
        already known, e.g. for parameters that only the observables use."""
        linear = self.linear_parameters(x)
        if values is None:
            values, _ = self.simulate_conditions(x)
        named = dict(zip(self.parameter_ids, linear, strict=True))
        for o in self._observables:
            if o.rows.size == 0:
                continue
            cond = self._row_condition[o.rows]
            env = dict(named)
            env["time"] = jnp.asarray(self._measurement_times[o.rows], linear.dtype)
            for column, (index, const) in self._extra.items():
                env[column] = _gather(index[cond], const[cond], linear)
            for name, (index, const) in o.placeholders.items():
                env[name] = _gather(index, const, linear)
            for name in set(o.symbols + o.noise_symbols) & set(values):
                env[name] = values[name][cond, self._row_time[o.rows]]
            shape = (o.rows.size,)
            simulation = jnp.broadcast_to(o.formula(env), shape)
            env[o.observable_id] = simulation
            sigma = jnp.broadcast_to(o.noise(env), shape)
            yield o, jnp.asarray(self.measurements[o.rows], linear.dtype), simulation, sigma

    def __repr__(self):
        return (f"PetabProblem({self.yaml_path.name}: {len(self.x_ids)} estimated, "
                f"{len(self.measurements)} measurements, {len(self.condition_ids)} "
                f"conditions, {self.model!r})")


def load_petab(yaml_path, **options) -> PetabProblem:
    """Load a PEtab v1 problem. See `PetabProblem` for the `options` (solver, rtol,
    atol, max_steps, sensitivity).

    **Raises:** `FileNotFoundError`; `PetabError` for a missing column, an unknown
    observable, condition or symbol, bad scales or bounds; `SBMLError` and
    `SBMLUnsupportedError` from the model.
    """
    return PetabProblem(yaml_path, **options)
