"""Hierarchical optimisation: scaling and noise parameters profiled out in closed form.

Many PEtab problems estimate parameters that only the observables use: a scaling factor
of relative data (a Western blot's gel-specific factor, ``h = s * g``) or a noise level
(``sigma = sigma_0 * c``). For given values of the other parameters their best values
have closed forms, so a fit need only move the others while every evaluation uses the
best scalings and noise levels for them (hierarchical optimisation: Loos et al. 2018,
Bioinformatics 34:4266; a case of variable projection, Golub & Pereyra 1973). The fitted
parameter space is smaller, and a start can no longer stall with a scaling or a noise
level far from the one its dynamics call for.

`find_inner_parameters` reads them off the problem (symbolically, once); `ProfiledPetab`
is the objective of the others. Its objective values are those of the full problem at
`ProfiledPetab.complete` ``(x)``, computed by the same code, so nothing is approximated;
its derivatives include those of the profiled values (the Jacobian of variable
projection).

A parameter is profiled when it is estimated, not used by the model or the conditions,
and in every measurement row that uses it:

- a *scaling*: the observable formula is homogeneous of degree 1 in it (``s * g``) with
  a ``lin`` transformation and normal noise, and the noise formula is of degree 0 (then
  ``s = sum(m g / sigma^2) / sum(g^2 / sigma^2)``) or of degree 1 in it, noise relative
  to the signal (then ``1/s`` is the positive root of ``Y a^2 - HY a - n = 0`` with
  ``Y = sum(m^2 / c^2)``, ``HY = sum(m g / c^2)``, ``c`` the noise at ``s = 1``);
- a *noise* parameter: the observable does not use it and the noise formula is
  homogeneous of degree 1 in it (``sigma_0 * c``), normal or Laplace noise; then
  ``sigma_0^2 = mean(((f(m) - f(h)) / c)^2)``, or ``sigma_0 = mean(|f(m) - f(h)| / c)``.

A row may use one profiled parameter: where two scalings meet they both stay estimated,
and a noise parameter stays estimated where it shares rows with a profiled scaling
(its best value would depend on the scaling's and vice versa). Values are clipped to
the bounds, which keeps them optimal: each objective is convex in ``s``, ``1/s`` or
``sigma_0^2``.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from .likelihood import transform
from .petab import AbstractPetabObjective, PetabProblem, _scale, _unscale

KINDS = ("scaling", "noise")


@dataclass(frozen=True)
class InnerParameter:
    """A parameter that `ProfiledPetab` profiles out.

    - `parameter_id`; `kind`: ``"scaling"`` or ``"noise"``;
    - `relative`: for a scaling, whether the noise is proportional to it too;
    - `distribution`: for a noise parameter, ``"normal"`` or ``"laplace"``;
    - `rows`: the measurement rows that use it.
    """

    parameter_id: str
    kind: str
    relative: bool
    distribution: str
    rows: np.ndarray


def _degree(expression, names) -> int | None:
    """0 or 1 if `expression` is homogeneous of that degree in the symbols `names`
    (taken together), else None."""
    import sympy

    symbols = [s for s in expression.free_symbols if s.name in names]
    if not symbols:
        return 0
    factor = sympy.Symbol("_modopt_factor", positive=True)
    scaled = expression.subs({s: factor * s for s in symbols}, simultaneous=True)
    if sympy.simplify(scaled - factor * expression) == 0:
        return 1
    return 0 if sympy.simplify(scaled - expression) == 0 else None


def _used_outside_observables(problem: PetabProblem) -> set[int]:
    """Positions (in the parameter table) of the parameters that the model or the
    conditions use."""
    tables = [problem._p_index, problem._o_index, problem._pre_p_index, problem._pre_o_index]
    tables += [index for index, _ in problem._extra.values()]
    return {int(i) for table in tables for i in np.ravel(table) if i >= 0}


def _uses(problem: PetabProblem, position: int):
    """Per observable with rows, the rows (positions in ``o.rows``) grouped by the set of
    formula symbols that stand for parameter `position` there. Yields
    ``(observable, symbol names, row positions)``."""
    parameter_id = problem.parameter_ids[position]
    for o in problem._observables:
        if o.rows.size == 0:
            continue
        names = [[] for _ in o.rows]
        if parameter_id in o.symbols + o.noise_symbols:
            for entry in names:
                entry.append(parameter_id)
        for name, (index, _) in o.placeholders.items():
            for r in np.flatnonzero(index == position):
                names[r].append(name)
        groups: dict[frozenset, list[int]] = {}
        for r, entry in enumerate(names):
            if entry:
                groups.setdefault(frozenset(entry), []).append(r)
        for symbols, rows in groups.items():
            yield o, symbols, np.array(rows)


def _classify(problem: PetabProblem, position: int) -> InnerParameter | None:
    """The kind of inner parameter that parameter `position` is, or None."""
    import sympy

    kinds, relative, distributions, rows = set(), set(), set(), []
    for o, symbols, positions in _uses(problem, position):
        noise = o.noise_expression.subs(sympy.Symbol(o.observable_id), o.expression)
        observable_degree = _degree(o.expression, symbols)
        noise_degree = _degree(noise, symbols)
        if observable_degree == 1 and noise_degree is not None and (
                o.transformation, o.distribution) == ("lin", "normal"):
            kinds.add("scaling")
            relative.add(noise_degree == 1)
        elif observable_degree == 0 and noise_degree == 1:
            kinds.add("noise")
            distributions.add(o.distribution)
        else:
            return None
        rows.append(o.rows[positions])
    if len(kinds) != 1 or len(relative) > 1 or len(distributions) > 1:
        return None
    kind = kinds.pop()
    return InnerParameter(problem.parameter_ids[position], kind,
                          relative.pop() if relative else False,
                          distributions.pop() if distributions else "normal",
                          np.sort(np.concatenate(rows)))


def find_inner_parameters(problem: PetabProblem) -> tuple[InnerParameter, ...]:
    """The estimated parameters of `problem` that `ProfiledPetab` can profile out (see
    the module's docstring for the rules), in the order of ``problem.x_ids``."""
    outside = _used_outside_observables(problem)
    found = [c for c in (_classify(problem, int(k)) for k in problem._estimated
                         if int(k) not in outside) if c is not None]
    count = np.zeros((len(KINDS), len(problem.measurements)), int)
    for c in found:
        count[KINDS.index(c.kind), c.rows] += 1
    scalings = [c for c in found if c.kind == "scaling" and np.all(count[0, c.rows] == 1)]
    scaled = np.zeros(len(problem.measurements), bool)
    for c in scalings:
        scaled[c.rows] = True
    noise = [c for c in found if c.kind == "noise" and np.all(count[1, c.rows] == 1)
             and not scaled[c.rows].any()]
    kept = {c.parameter_id for c in scalings + noise}
    return tuple(c for c in found if c.parameter_id in kept)


class ProfiledPetab(AbstractPetabObjective):
    """`problem` with its scaling and noise parameters profiled out (see the module's
    docstring): an objective of the other estimated parameters only. `inner`: the
    result of ``find_inner_parameters(problem)`` when already known.

    Attributes: `problem`; `inner` (the `InnerParameter`s); `x_ids`, `lower`, `upper`,
    `x_nominal` (the other parameters, scaled, as in `PetabProblem`); `outer_positions`
    and `inner_positions` (their places in ``problem.x_ids``).

    All `PetabProblem` objective methods (`nllh`, `chi2`, `residuals`, ...) take the
    outer parameters and equal the full problem's at `complete` ``(x)``.

    **Raises:** `ValueError` if `problem` has no parameter to profile out.
    """

    def __init__(self, problem: PetabProblem, inner: tuple[InnerParameter, ...] | None = None):
        self.problem = problem
        self.inner = find_inner_parameters(problem) if inner is None else inner
        if not self.inner:
            raise ValueError(f"ProfiledPetab: {problem.yaml_path.name} has no scaling or "
                             "noise parameter that can be profiled out")
        ids = list(problem.x_ids)
        self.inner_positions = np.array([ids.index(c.parameter_id) for c in self.inner])
        self.outer_positions = np.setdiff1d(np.arange(len(ids)), self.inner_positions)
        self.x_ids = tuple(ids[i] for i in self.outer_positions)
        self.lower = problem.lower[self.outer_positions]
        self.upper = problem.upper[self.outer_positions]
        self.x_nominal = problem.x_nominal[self.outer_positions]
        self.measurements = problem.measurements
        self.yaml_path = problem.yaml_path
        self._noise_is_estimated = problem._noise_is_estimated
        codes = problem._codes[problem._estimated][self.inner_positions]
        self._inner_codes = codes
        self._inner_one = np.array([_scale(1.0, int(c)) for c in codes])
        self._inner_bounds = [np.asarray(_unscale(problem.lower[self.inner_positions], codes)),
                              np.asarray(_unscale(problem.upper[self.inner_positions], codes))]
        # Each row's inner parameter of each kind (its index in `inner`, or -1).
        self._segment = {kind: np.full(len(self.measurements), -1) for kind in KINDS}
        for j, c in enumerate(self.inner):
            self._segment[c.kind][c.rows] = j
        self._relative = np.array([c.relative for c in self.inner])
        self._laplace = np.array([c.distribution == "laplace" for c in self.inner])
        self._is_scaling = np.array([c.kind == "scaling" for c in self.inner])

    def complete(self, x):
        """All estimated parameters of ``problem`` (scaled): `x` and the profiled values."""
        return self._profile(x)[0]

    def _full(self, x, inner):
        x = jnp.asarray(x)
        if x.shape != (len(self.x_ids),):
            raise ValueError(f"{self.yaml_path.name}: x must have shape ({len(self.x_ids)},) "
                             f"for the parameters {self.x_ids} (the scaling and noise "
                             f"parameters are profiled out), got {x.shape}")
        full = jnp.zeros(len(self.problem.x_ids), x.dtype)
        return full.at[self.outer_positions].set(x).at[self.inner_positions].set(inner)

    def _rows(self, parts, quantity, dtype):
        """`quantity(o, m, h, sigma)` of every part, as one array over measurement rows."""
        out = jnp.zeros(len(self.measurements), dtype)
        for o, m, h, sigma in parts:
            out = out.at[o.rows].set(quantity(o, m, h, sigma))
        return out

    def _profile(self, x):
        """``(full x, simulation)``: the best inner values for `x`, from one simulation."""
        one = self._full(x, jnp.asarray(self._inner_one, x.dtype))
        values, _ = self.problem.simulate_conditions(one)
        parts = list(self.problem._per_observable(one, values))
        dtype = one.dtype
        m = jnp.asarray(self.measurements, dtype)
        g = self._rows(parts, lambda o, m, h, sigma: h, dtype)
        c = self._rows(parts, lambda o, m, h, sigma: sigma, dtype)
        r = self._rows(parts, lambda o, m, h, sigma: transform(m, o.transformation)
                       - transform(h, o.transformation), dtype)
        count = len(self.inner)

        def sums(kind, data):
            segment = self._segment[kind]
            return jax.ops.segment_sum(jnp.where(segment >= 0, data, 0.0),
                                       np.maximum(segment, 0), num_segments=count)

        n = sums("scaling", jnp.ones_like(m)) + sums("noise", jnp.ones_like(m))
        weight = 1.0 / c**2
        hy, hh, yy = (sums("scaling", weight * a * b) for a, b in ((m, g), (g, g), (m, m)))
        safe = lambda v: jnp.where(v > 0, v, 1.0)
        absolute = jnp.where(hh > 0, hy / safe(hh), 1.0)
        relative = jnp.where(yy > 0, 2 * yy / safe(hy + jnp.sqrt(hy**2 + 4 * n * yy)), 1.0)
        scaling = jnp.where(self._relative, relative, absolute)
        scaled_r = r / c
        square = sums("noise", scaled_r**2) / safe(n)
        mean_abs = sums("noise", jnp.abs(scaled_r)) / safe(n)
        lower, upper = (jnp.asarray(b, dtype) for b in self._inner_bounds)
        # The normal case squared so that the root's derivative stays finite at zero.
        normal = jnp.sqrt(jnp.clip(square, jnp.maximum(lower, 0.0)**2, upper**2))
        noise = jnp.where(self._laplace, mean_abs, normal)
        best = jnp.clip(jnp.where(self._is_scaling, scaling, noise), lower, upper)
        scale = (lambda v: v, jnp.log, jnp.log10)
        inner = jnp.stack([scale[code](best[j]) for j, code in enumerate(self._inner_codes)])
        return self._full(x, inner), values

    def _parts(self, x):
        full, values = self._profile(x)
        return list(self.problem._per_observable(full, values))

    def _fisher_parts(self, x):
        """`_parts` with the profiled noise levels held constant in the derivatives.

        Their derivative does not change the gradient (the nllh is stationary in them),
        but through it the standardised residuals of a noise level keep a constant norm,
        so ``J^T J`` of the outputs would lose the gradient's direction; held constant,
        it is the Fisher information at the profiled noise, the Gauss-Newton metric of
        ``n/2 log(sum r^2)``."""
        full, values = self._profile(x)
        noise = self.inner_positions[~self._is_scaling]
        full = full.at[noise].set(jax.lax.stop_gradient(full[noise]))
        return list(self.problem._per_observable(full, values))

    def __repr__(self):
        inner = ", ".join(f"{c.parameter_id} ({c.kind})" for c in self.inner)
        return f"ProfiledPetab({self.yaml_path.name}: {len(self.x_ids)} estimated; {inner})"


def _profiling_cache(problem: PetabProblem):
    """``(inner parameters, views by kinds)`` of `problem`: the parameters found once
    (symbolically), again with the views when the problem's bounds have changed."""
    bounds = (tuple(np.asarray(problem.lower, float)), tuple(np.asarray(problem.upper, float)))
    if problem.__dict__.get("_profiling", (None,))[0] != bounds:
        problem.__dict__["_profiling"] = (bounds, find_inner_parameters(problem), {})
    return problem.__dict__["_profiling"][1:]


def automatic_kinds(problem: AbstractPetabObjective) -> tuple[str, ...]:
    """The kinds that ``fit_petab(hierarchical="auto")`` profiles out: the scalings, and
    the noise level when a single one covers every measurement.

    A lone noise level profiled out only rescales the objective (``n/2 log(RSS)``), so
    Gauss-Newton steps stay those of the least squares. Several reweight the observables
    against each other at every evaluation, each by ``n_g / RSS_g``, so that the one
    fitted best counts most; with them the steps reached the best basin less often
    (Boehm_JProteomeRes2014, three noise levels: 1 % of 100 starts within 2 of the best,
    against 6 % with them fitted; see docs/bio.md)."""
    if not isinstance(problem, PetabProblem):
        return ()
    noise = [c for c in _profiling_cache(problem)[0] if c.kind == "noise"]
    whole = len(noise) == 1 and len(noise[0].rows) == len(problem.measurements)
    return KINDS if whole else ("scaling",)


def kinds_to_profile(problem: AbstractPetabObjective, hierarchical) -> tuple[str, ...]:
    """The kinds of inner parameters that `fit_petab`'s `hierarchical` asks for: ``True``
    both, ``False`` none, ``"auto"`` `automatic_kinds` ``(problem)``, or a tuple of kinds.

    **Raises:** `ValueError` for anything else."""
    kinds = ((KINDS if hierarchical else ()) if isinstance(hierarchical, bool)
             else automatic_kinds(problem) if hierarchical == "auto" else hierarchical)
    if not isinstance(kinds, (tuple, list)) or not set(kinds) <= set(KINDS):
        raise ValueError(f"hierarchical must be a bool, 'auto' or a tuple of kinds among "
                         f"{KINDS}, got {hierarchical!r}")
    return tuple(kinds)


def profiled(problem: AbstractPetabObjective,
             kinds: tuple[str, ...] = KINDS) -> AbstractPetabObjective:
    """``ProfiledPetab(problem)`` with the inner parameters of `kinds` (``"scaling"``,
    ``"noise"``) when it has any, else `problem`. Made once per problem, kinds and bounds
    (so that fits reuse its compiled functions), again when the problem's bounds have
    changed.

    **Raises:** `ValueError` for a kind not in ``("scaling", "noise")``."""
    kinds = tuple(kinds)
    if unknown := set(kinds) - set(KINDS):
        raise ValueError(f"profiled: kinds must be among {KINDS}, got {sorted(unknown)}")
    if not isinstance(problem, PetabProblem) or not kinds:
        return problem
    # Which scalings are profiled does not depend on the noise levels, so the parameters
    # of a subset of kinds are a filter of the full list.
    found, views = _profiling_cache(problem)
    key = tuple(kind for kind in KINDS if kind in kinds)
    if key not in views:
        inner = tuple(c for c in found if c.kind in key)
        views[key] = ProfiledPetab(problem, inner) if inner else problem
    return views[key]
