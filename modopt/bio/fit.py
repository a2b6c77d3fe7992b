"""Multi-start fitting of PEtab problems: Latin-hypercube starts in the bounds, all run
as one ``vmap``-ped batch (sharded over every JAX device), by the Riemannian steps or
the Riemannian flow, with the Fisher information as metric.

```python
problem = modopt.bio.load_petab("Boehm_JProteomeRes2014.yaml")
fit = modopt.bio.fit_petab(problem, starts=100, method="steps")
fit.best_nllh, fit.x[fit.order[0]], fit.status
```

The module being fitted maps the scaled parameters ``x`` (clipped to the bounds) to the
standardised residuals ``z = (f(m) - f(h)) / sigma`` and, when the noise is estimated,
``sqrt(2) log sigma`` per measurement; the loss ``0.5 |z|^2 + sum(log sigma)`` is the
negative log-likelihood up to a constant, and the output metric is the identity, i.e.
the inverse noise covariance on the observables. So the metric of the flow is
``G = J^T J + mass``: the Fisher information plus the mass.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .. import metrics
from .._module import AbstractSystemModule
from ..flow import flow
from ..steps import AdaptiveMass, RiemannianSteps
from .petab import PetabProblem

STATUSES = ("converged", "max_iterations", "failed_at_start", "failed")
_FROZEN_MASS = 1e15  # the mass of a parameter held at its bound by the active set


class PetabResiduals(AbstractSystemModule):
    """A PEtab problem as a modopt module of its parameters ``x``.

    The input is ignored (pass zeros of shape ``(1,)``); the output is
    ``problem._fisher_outputs(clip(x, lower, upper))`` (see `PetabProblem`).
    """

    x: jax.Array
    problem: PetabProblem = eqx.field(static=True)
    sensitivity: str = eqx.field(static=True, kw_only=True, default="forward")
    in_shape: tuple[int, ...] | None = eqx.field(static=True, kw_only=True, default=(1,))
    mass: float | None = eqx.field(static=True, kw_only=True, default=None)

    def __call__(self, u=None):
        p = self.problem
        x = jnp.clip(self.x, jnp.asarray(p.lower, self.x.dtype), jnp.asarray(p.upper, self.x.dtype))
        return p._fisher_outputs(x)


def latin_hypercube_starts(problem: PetabProblem, count: int, seed: int = 0) -> np.ndarray:
    """`count` starts in the bounds (scaled), one Latin-hypercube sample.

    **Returns:** shape ``(count, len(problem.x_ids))``.
    """
    from scipy.stats import qmc

    if count < 1:
        raise ValueError(f"latin_hypercube_starts: count must be positive, got {count}")
    sample = qmc.LatinHypercube(d=len(problem.x_ids), seed=seed).random(count)
    return qmc.scale(sample, problem.lower, problem.upper)


@dataclass
class MultistartResult:
    """The outcome of `fit_petab`.

    - `x`: final parameters, ``(starts, d)`` (scaled; within the bounds).
    - `nllh`: the negative log-likelihood there (NaN for failed starts).
    - `status`: per start, one of `STATUSES`.
    - `starts`: the starting points.
    - `history`: ``(starts, checkpoints)`` nllh after each chunk of iterations.
    - `wall_time_s`: total, compilation included unless the same configuration was
      fitted before (the compiled runners are cached).
    - `method`, `x_ids`; `info`: devices, iterations, mass, gtol.
    """

    x: np.ndarray
    nllh: np.ndarray
    status: list
    starts: np.ndarray
    history: np.ndarray
    wall_time_s: float
    method: str
    x_ids: tuple
    info: dict = field(default_factory=dict)

    @property
    def order(self) -> np.ndarray:
        """Start indices from best to worst (failed starts last)."""
        return np.argsort(np.where(np.isfinite(self.nllh), self.nllh, np.inf))

    @property
    def best_nllh(self) -> float:
        return float(np.nanmin(self.nllh)) if np.isfinite(self.nllh).any() else float("nan")

    def fraction_within(self, reference: float | None = None, tolerance: float = 2.0) -> float:
        """Share of starts ending within `tolerance` of `reference` (default: the best)."""
        reference = self.best_nllh if reference is None else reference
        return float(np.mean(np.isfinite(self.nllh) & (self.nllh <= reference + tolerance)))

    def table(self) -> str:
        """A markdown table of the starts, best first."""
        lines = ["| rank | start | nllh | status |", "|---:|---:|---:|---|"]
        for rank, i in enumerate(self.order, 1):
            lines.append(f"| {rank} | {i} | {self.nllh[i]:.4f} | {self.status[i]} |")
        return "\n".join(lines)


def _shard(batch):
    """Put the leading (start) axis of `batch` across all devices (no-op on one)."""
    devices = jax.devices()
    if len(devices) == 1:
        return batch
    mesh = jax.sharding.Mesh(np.array(devices), ("starts",))
    spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("starts"))
    return jax.device_put(batch, spec)


class _NegativeLogLikelihood(eqx.Module):
    """``0.5 |z|^2 + sum(y_noise) / sqrt(2)`` of `PetabResiduals`' outputs."""

    measurements: int = eqx.field(static=True)

    def __call__(self, predictions, targets):
        z, noise = predictions[..., :self.measurements], predictions[..., self.measurements:]
        return 0.5 * jnp.sum(z**2) + jnp.sum(noise) / jnp.sqrt(2.0)


def fit_petab(
    problem: PetabProblem,
    starts: int | np.ndarray = 100,
    *,
    method: str = "steps",
    iterations: int = 200,
    chunk: int = 20,
    mass: float = 1e-3,
    s1: float = 60.0,
    gtol: float = 1e-6,
    seed: int = 0,
    progress: bool = True,
    compile_only: bool = False,
) -> MultistartResult | None:
    """Fit `problem` from many starts at once.

    **Arguments:**

    - `problem`: a `PetabProblem` (``sensitivity="forward"``, the default).
    - `starts`: a number (Latin-hypercube starts in the bounds, `seed`) or an array
      ``(starts, d)`` of scaled parameters.
    - `method`: ``"steps"`` (Algorithm 1 with a Levenberg-Marquardt adaptive mass,
      `iterations` steps in chunks of `chunk`; a parameter at a bound that the gradient
      pushes outwards is held there, the others take the reduced step) or ``"flow"`` (the
      Riemannian flow to pseudo-time `s1`, stopping when ``g^T G^-1 g < gtol``).
    - `mass`: the diagonal mass (its starting value for ``"steps"``).
    - `gtol`: a start has converged when ``g^T G^-1 g < gtol`` (about twice the
      decrease of the nllh that one more Gauss-Newton step would give).
    - `progress`: print a line per chunk.
    - `compile_only`: only compile for these starts and return ``None``; the next fit
      with the same settings and starts runs without compiling (a benchmark's warm-up).

    **Returns:** a `MultistartResult`. A start whose model cannot be integrated at its
    starting point is marked ``"failed_at_start"``; one that fails later keeps its last
    good parameters (failed steps are rejected). No start stops the others.

    **Raises:** `ValueError` for a bad `method` or starts of the wrong shape.
    """
    if method not in ("steps", "flow"):
        raise ValueError(f"fit_petab: method must be 'steps' or 'flow', got {method!r}")
    x0 = (latin_hypercube_starts(problem, starts, seed) if np.isscalar(starts)
          else np.asarray(starts, dtype=float))
    if x0.ndim != 2 or x0.shape[1] != len(problem.x_ids):
        raise ValueError(f"fit_petab: starts must have shape (n, {len(problem.x_ids)}), "
                         f"got {x0.shape}")
    count = x0.shape[0]
    began = time.perf_counter()
    runners = _runners(problem, method, iterations, chunk, mass, s1, gtol)
    # Starts where the model cannot be integrated are marked and left out: in a vmapped
    # batch every one of their failing solves would run to max_steps at every iteration.
    initial = np.asarray(runners["nllh"](jnp.asarray(x0, jnp.result_type(float))))
    alive = np.flatnonzero(np.isfinite(initial))
    final_x, final_nllh = x0.copy(), np.full(count, np.nan)
    converged = np.zeros(count, bool)
    history = np.full((count, 1), np.nan)
    if compile_only:
        if alive.size:
            batch = _padded_batch(x0[alive])
            if method == "flow":
                _compiled(runners, "flow", batch)
            else:
                _compiled(runners, "chunk", batch, _call(runners, "init", batch))
        return None
    if alive.size:
        x, value, stationary, trace = _fit_batch(
            problem, x0[alive], runners, method, iterations, chunk, s1, gtol, progress, began)
        final_x[alive], final_nllh[alive], converged[alive] = x, value, stationary
        history = np.full((count, trace.shape[1]), np.nan)
        history[alive] = trace
    status = []
    for i in range(count):
        if not np.isfinite(initial[i]):
            status.append("failed_at_start")
        elif not np.isfinite(final_nllh[i]):
            status.append("failed")
        else:
            status.append("converged" if converged[i] else "max_iterations")
    seconds = time.perf_counter() - began
    return MultistartResult(
        x=final_x, nllh=final_nllh, status=status, starts=x0, history=history,
        wall_time_s=seconds, method=method, x_ids=problem.x_ids,
        info={"devices": len(jax.devices()), "iterations": iterations, "mass": mass,
              "gtol": gtol},
    )


@functools.lru_cache(maxsize=16)
def _runners(problem, method, iterations, chunk, mass, s1, gtol):
    """The jitted functions of one fit configuration, built once: a second fit with the
    same settings (another seed, a benchmark's timed run) does not compile again."""
    dtype = jnp.result_type(float)
    lower = jnp.asarray(problem.lower, dtype)
    upper = jnp.asarray(problem.upper, dtype)
    inputs = jnp.zeros((1, 1), dtype)
    targets = jnp.zeros((1,) + problem._evaluate("fisher_outputs", None).shape, dtype)
    output_metric = metrics.Identity()
    _loss = _NegativeLogLikelihood(len(problem.measurements))

    def nllh_of(x):
        return problem._nllh(jnp.clip(x, lower, upper))

    nominal = problem._evaluate("fisher_outputs", None)
    runners = {"nllh": jax.jit(jax.vmap(nllh_of)), "compiled": {},
               # nllh - loss, the same at every x
               "constant": float(problem.nllh() - _loss(nominal[None], None))}
    if method == "flow":
        def run_flow(x):
            solution = flow(PetabResiduals(x, problem), _loss, inputs, targets,
                            output_metric=output_metric, mass=mass, s1=s1, gtol=gtol,
                            max_steps=iterations)
            final = jnp.clip(solution.model.x, lower, upper)
            return final, nllh_of(final), solution.riemannian_norm2, solution.losses

        runners["flow"] = jax.jit(jax.vmap(run_flow))
        return runners

    adaptive = AdaptiveMass(min_scale=1e-8)
    optimizer = RiemannianSteps(1.0, output_metric=output_metric, mass=mass,
                                adaptive_mass=adaptive)

    def run_chunk(x, state):
        def body(carry, _):
            x, state = carry
            # Active set (projected Newton): a parameter at a bound whose last gradient
            # points out of the box gets a mass so large that it does not move, and the
            # others take the step of the problem reduced to them. A projected step of the
            # full problem instead stalls at the bound.
            g = state.gradient.x
            active = ((x <= lower) & (g > 0)) | ((x >= upper) & (g < 0))
            per_parameter = jnp.where(active, _FROZEN_MASS, mass).astype(x.dtype)
            step = RiemannianSteps(1.0, output_metric=output_metric,
                                   mass=PetabResiduals(per_parameter, problem),
                                   adaptive_mass=adaptive)
            updates, state = step.update(PetabResiduals(x, problem), state, _loss,
                                         inputs, targets)
            return (jnp.clip(x + updates.x, lower, upper), state), None

        (x, state), _ = jax.lax.scan(body, (x, state), None, length=chunk)
        return x, state, nllh_of(x)

    runners["chunk"] = jax.jit(jax.vmap(run_chunk))
    runners["init"] = jax.jit(jax.vmap(lambda x: optimizer.init(PetabResiduals(x, problem))))
    return runners


def _padded_batch(x0):
    """`x0` as one batch sharded over the devices, padded with copies of start 0 to
    equal shards."""
    count, devices = x0.shape[0], len(jax.devices())
    padded = -(-count // devices) * devices
    return _shard(jnp.asarray(np.concatenate([x0, np.repeat(x0[:1], padded - count, 0)]),
                              jnp.result_type(float)))


def _compiled(runners, name, *args):
    """``runners[name]`` compiled ahead of time for the shapes and shardings of `args`,
    once (so that `fit_petab`'s ``compile_only`` can warm up without running)."""
    leaves = jax.tree.leaves(args)
    key = (name, jax.tree.structure(args),
           tuple((leaf.shape, leaf.dtype, leaf.sharding) for leaf in leaves))
    compiled = runners["compiled"]
    if key not in compiled:
        compiled[key] = runners[name].lower(*args).compile()
    return compiled[key]


def _call(runners, name, *args):
    return _compiled(runners, name, *args)(*args)


def _fit_batch(problem, x0, runners, method, iterations, chunk, s1, gtol, progress, began):
    """Fit the starts `x0` as one batch. **Returns:** final x, nllh, a converged flag and
    the nllh history ``(starts, checkpoints)``."""
    count = x0.shape[0]
    x_batch = _padded_batch(x0)
    if method == "flow":
        if progress:
            print(f"  flow: {count} starts, s1 = {s1}, up to {iterations} solver steps ...",
                  flush=True)
        try:
            x, value, norm2, losses = jax.block_until_ready(_call(runners, "flow", x_batch))
        except Exception as error:  # noqa: BLE001 - as for the steps below
            if progress:
                print(f"  flow: a start raised ({type(error).__name__}); rerunning start by "
                      "start", flush=True)
            x, value, norm2, losses = _flow_one_by_one(runners, x_batch)
        trace = np.asarray(losses) + runners["constant"]
        trace[:, -1] = np.asarray(value)
        return (np.asarray(x)[:count], np.asarray(value)[:count],
                np.asarray(norm2)[:count] < gtol, trace[:count])

    state = _call(runners, "init", x_batch)
    x, trace, previous = x_batch, [], np.inf
    broken = np.zeros(x_batch.shape[0], bool)
    one_by_one = False
    for done in range(chunk, iterations + chunk, chunk):
        if not one_by_one:
            try:
                x, state, value = jax.block_until_ready(_call(runners, "chunk", x, state))
            except Exception as error:  # noqa: BLE001 - XLA re-raises it as several types
                # Lineax raises from derivative solves inside implicit ODE solvers when one
                # start's state overflows; in a batch that would end every start. Keep the
                # chunk's starting point and continue start by start without the culprit.
                if progress:
                    print(f"  steps: a start raised ({type(error).__name__}); continuing "
                          "start by start", flush=True)
                one_by_one = True
        if one_by_one:
            x, state, value, broken = _chunk_one_by_one(
                functools.partial(_call, runners, "chunk"), x, state, broken)
        value = np.where(broken, np.nan, np.asarray(value))
        trace.append(value)
        # Converged: Fisher-metric gradient norm below gtol, or (at a bound, where the
        # projected step is zero but the gradient is not) no progress over a chunk.
        with np.errstate(invalid="ignore"):
            stalled = np.abs(previous - value) < 1e-6 * (1 + np.abs(value))
        stationary = (np.asarray(state.riemannian_norm2) < gtol) | stalled
        previous = value
        if progress:
            best = np.nanmin(value) if np.isfinite(value).any() else np.nan
            print(f"  steps: {min(done, iterations)}/{iterations} iterations, best nllh "
                  f"{best:.4f}, {int(stationary[:count].sum())}/{count} converged, "
                  f"{time.perf_counter() - began:.0f} s", flush=True)
        if done >= iterations or stationary[:count].all():
            break
    return (np.asarray(x)[:count], value[:count], stationary[:count],
            np.stack(trace, axis=1)[:count])


def _flow_one_by_one(runners, x_batch):
    """The flow for every start on its own; a start that raises keeps its starting point
    with a NaN nllh (so it is marked failed)."""
    results = []
    for i in range(x_batch.shape[0]):
        xi = x_batch[i:i + 1]
        try:
            results.append(jax.block_until_ready(_call(runners, "flow", xi)))
        except Exception:  # noqa: BLE001 - XLA re-raises it as several types
            shape = jax.eval_shape(runners["flow"], xi)[3].shape
            results.append((xi, jnp.full((1,), jnp.nan, xi.dtype),
                            jnp.full((1,), jnp.inf, xi.dtype), jnp.full(shape, jnp.nan, xi.dtype)))
    return tuple(jnp.concatenate(parts) for parts in zip(*results))


def _chunk_one_by_one(run, x, state, broken):
    """One chunk for every start on its own; a start that raises keeps its parameters
    and is marked broken (NaN nllh) for the rest of the fit."""
    xs, states, values = [], [], []
    for i in range(x.shape[0]):
        xi, si = x[i:i + 1], jax.tree.map(lambda leaf, i=i: leaf[i:i + 1], state)
        value = jnp.full((1,), jnp.nan, x.dtype)
        if not broken[i]:
            try:
                xi, si, value = jax.block_until_ready(run(xi, si))
            except Exception:  # noqa: BLE001 - XLA re-raises it as several types
                broken = broken.copy()
                broken[i] = True
        xs.append(xi)
        states.append(si)
        values.append(value)
    state = jax.tree.map(lambda *leaves: jnp.concatenate(leaves), *states)
    return jnp.concatenate(xs), state, jnp.concatenate(values), broken
