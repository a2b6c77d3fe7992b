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

import dataclasses
import functools
import time
from dataclasses import dataclass, field

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .. import metrics
from .._module import AbstractSystemModule
from ..bounds import Box
from ..flow import flow
from ..rosenbrock import Ros2
from ..steps import AdaptiveMass, RiemannianSteps
from .abandon import EarlyAbandon
from .batch_sizes import BatchSizeChooser
from .hierarchical import kinds_to_profile, profiled
from .petab import AbstractPetabObjective, PetabProblem
from .plateaus import PlateauEscape

STATUSES = ("converged", "max_iterations", "abandoned", "failed_at_start", "failed")


class PetabResiduals(AbstractSystemModule):
    """A PEtab problem as a modopt module of its parameters ``x``.

    The input is ignored (pass zeros of shape ``(1,)``); the output is
    ``problem._fisher_outputs(clip(x, lower, upper))`` (see `PetabProblem`).
    """

    x: jax.Array
    problem: AbstractPetabObjective = eqx.field(static=True)
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
    - `nllh`: the negative log-likelihood there (NaN for starts that failed at their
      start; a start that failed later has the nllh of its last good parameters).
    - `status`: per start, one of `STATUSES`.
    - `starts`: the starting points.
    - `history`: ``(starts, checkpoints)`` nllh after each chunk of iterations (NaN once
      a start is done).
    - `wall_time_s`: total, compilation included unless the same configuration was
      fitted before (the compiled runners are cached).
    - `method`, `x_ids`; `info`: devices, iterations, mass, max_step, gtol, batch_size,
      batch_calls (calls per batch size), escape (its settings), escapes (per start, how
      often `PlateauEscape` restarted it; the history then goes on after the checkpoints
      of the first fit), escape_time_s (the wall time of its scans and restarts),
      abandon (the `EarlyAbandon` settings) and profiled (the parameters profiled out).
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
    max_step: float | None = 1.0,
    s1: float = 60.0,
    ode_solver: diffrax.AbstractSolver | None = None,
    stepsize_controller: diffrax.AbstractStepSizeController | None = None,
    gtol: float = 1e-6,
    retries: int = 0,
    seed: int = 0,
    batch_size: int | str | None = "auto",
    escape: PlateauEscape | None = PlateauEscape(),
    hierarchical: bool | str | tuple[str, ...] = "auto",
    abandon: EarlyAbandon | None = EarlyAbandon(),
    progress: bool = True,
    compile_only: bool = False,
) -> MultistartResult | None:
    """Fit `problem` from many starts at once.

    **Arguments:**

    - `problem`: a `PetabProblem` (``sensitivity="forward"``, the default).
    - `starts`: a number (Latin-hypercube starts in the bounds, `seed`) or an array
      ``(starts, d)`` of scaled parameters (with `hierarchical`, the values given for the
      profiled parameters are not used).
    - `method`: ``"steps"`` (Algorithm 1 with a Levenberg-Marquardt adaptive mass,
      `iterations` steps in chunks of `chunk`; the bounds are kept by Coleman-Li scaling
      of the mass, `modopt.Box`) or ``"flow"`` (the
      Riemannian flow to pseudo-time `s1`, in the same box metric).
    - `ode_solver`, `stepsize_controller`: for ``"flow"``, the Diffrax solver of the flow
      and its step-size controller; `iterations` is its step limit. ``None``:
      `modopt.Ros2` (linearly implicit, L-stable) with ``PIDController(rtol=0.1,
      atol=1e-3)``, or with another solver `modopt.flow`'s default controller. On
      Bruno's first 16 starts, 9 ended within 2 of the best in 8.7 s per start, against
      5 with ``Tsit5`` at rtol 1e-4 in 28 s per start (docs/bio.md).
    - `mass`: the diagonal mass (its starting value for ``"steps"``).
    - `max_step`: for ``"steps"``, the longest step (norm of the change of the scaled
      parameters in the metric of the box, ``sqrt(sum dx^2 / v)``, which is the
      Euclidean norm for parameters about 1 from the bound they move to), or ``None``.
      Without it the first Gauss-Newton steps from a poor start can jump across the box
      into another basin: on Bruno (100 starts) the share of starts ending within 2 of
      the best rises from 35 % to 53 % with a cap of 1.
    - `gtol`: a start has converged when ``g^T G^-1 g < gtol`` (about twice the
      decrease of the nllh that one more Gauss-Newton step would give) or its nllh
      stopped changing (for the steps over a chunk, for the flow over the last fifth
      of its pseudo-time). For the steps ``G`` has the
      adaptive mass at its least (`StepState.undamped_norm2`): on a plateau, where the
      model hardly depends on ``x``, the mass alone would make the norm small. A step
      of the steps that promised less than `gtol` and was still rejected also ends the
      start as converged: the ODE solves' own error is then larger than what is left
      to gain. A start of the steps stops inside a chunk when it meets `gtol`.
    - `retries`: for ``"steps"``, how often a rejected step is tried again within the
      same iteration with 4 times the mass, from the same Jacobian (a loss evaluation
      and a solve each; `AdaptiveMass`), so that more iterations move. Each try costs a
      solve of the model at the trial point, which for a stiff model far from the data
      can cost as much as the Jacobian: with 3, 100 iterations took 1.0x the wall time
      on Bruno (100 starts), 1.4x on Boehm (16) and Fiedler (8), for slightly better
      ends (Boehm 6 of 16 converged against 4; the same share within 2).
    - `batch_size`: how many starts run at once as one ``vmap``-ped batch: a number,
      ``None`` (all) or ``"auto"`` (the default): one start per device or 8, whichever
      takes less wall time per start, measured while the fit runs (`BatchSizeChooser`).
      A batch runs as long as its slowest start (its ODE solves take the most solver
      steps of any start in it), which on a CPU can cost more than vectorising saves.
      The steps refill the batch as starts finish; the flow runs the starts group by
      group.
    - `escape`: where a start has converged, scan the flat directions of its Fisher
      metric (a rate so fast that the data no longer depend on it) and fit again from
      the best point when it is lower (`PlateauEscape`); ``None`` to end where the local
      method ends. On Bruno (100 starts) it takes the share within 2 of the best from
      64 % to 100 %.
    - `hierarchical`: the kinds of inner parameters to profile out (`ProfiledPetab`,
      `find_inner_parameters`), a tuple of ``"scaling"`` (scaling factors of relative
      data) and ``"noise"`` (noise levels); ``True`` for both, ``False`` for none;
      ``"auto"`` (the default, `automatic_kinds`): the scalings, and the noise level
      when a single one covers every measurement (several profiled noise levels
      reweight the observables by how well each is fitted, which led the steps to other
      basins on Boehm_JProteomeRes2014: 1 % of 100 starts within 2 of the best against
      6 %; see docs/bio.md). The fit moves the other parameters, and every evaluation
      uses the best values of the profiled ones for them, from closed forms. The results
      still hold all parameters.
    - `abandon`: for ``"steps"``, stop a start whose pace cannot bring it within
      `abandon.margin` of the best nllh found so far (`EarlyAbandon`; status
      ``"abandoned"``, with its nllh where it stopped); ``None`` to run every start to its
      own end (for a waterfall plot of local optima).
    - `progress`: print a line per chunk.
    - `compile_only`: only compile for these starts and return ``None``; the next fit
      with the same settings and starts runs without compiling (a benchmark's warm-up).

    **Returns:** a `MultistartResult`. A start whose model cannot be integrated at its
    starting point is marked ``"failed_at_start"``. Failed steps are rejected; a start
    whose solve raises (a runtime error, not a result code) is marked ``"failed"`` and
    keeps its last good parameters and their nllh (for the flow, its start); so is a
    start of the steps whose nllh at its current parameters is not finite (every step
    from there would be rejected). No start stops the others.

    **Raises:** `ValueError` for a bad `method`, `ode_solver`, `stepsize_controller`,
    `retries`, `batch_size`, `escape` or `hierarchical`, or starts of the wrong shape.
    """
    if method not in ("steps", "flow"):
        raise ValueError(f"fit_petab: method must be 'steps' or 'flow', got {method!r}")
    x0 = (latin_hypercube_starts(problem, starts, seed) if np.isscalar(starts)
          else np.asarray(starts, dtype=float))
    if x0.ndim != 2 or x0.shape[1] != len(problem.x_ids):
        raise ValueError(f"fit_petab: starts must have shape (n, {len(problem.x_ids)}), "
                         f"got {x0.shape}")
    if not (batch_size is None or batch_size == "auto"
            or (isinstance(batch_size, (int, np.integer)) and batch_size >= 1)):
        raise ValueError("fit_petab: batch_size must be positive, None or 'auto', got "
                         f"{batch_size!r}")
    if not (isinstance(retries, (int, np.integer)) and retries >= 0):
        raise ValueError(f"fit_petab: retries must be an int >= 0, got {retries!r}")
    if not (ode_solver is None or isinstance(ode_solver, diffrax.AbstractSolver)):
        raise ValueError("fit_petab: ode_solver must be a diffrax solver or None, got "
                         f"{ode_solver!r}")
    if not (stepsize_controller is None
            or isinstance(stepsize_controller, diffrax.AbstractStepSizeController)):
        raise ValueError("fit_petab: stepsize_controller must be a diffrax step-size "
                         f"controller or None, got {stepsize_controller!r}")
    if not (escape is None or isinstance(escape, PlateauEscape)):
        raise ValueError(f"fit_petab: escape must be a PlateauEscape or None, got {escape!r}")
    if not (abandon is None or isinstance(abandon, EarlyAbandon)):
        raise ValueError(f"fit_petab: abandon must be an EarlyAbandon or None, got {abandon!r}")
    try:
        kinds = kinds_to_profile(problem, hierarchical)
    except ValueError as error:
        raise ValueError(f"fit_petab: {error}") from None
    count = x0.shape[0]
    began = time.perf_counter()
    objective = profiled(problem, kinds)
    # The fit moves the parameters that are not profiled out; x0 and the results hold all.
    outer = getattr(objective, "outer_positions", slice(None))
    if method == "flow" and ode_solver is None:
        ode_solver = Ros2()
        if stepsize_controller is None:
            stepsize_controller = diffrax.PIDController(rtol=0.1, atol=1e-3)
    flow_options = tuple((name, value) for name, value in (
        ("ode_solver", ode_solver), ("stepsize_controller", stepsize_controller))
        if method == "flow" and value is not None)
    runners = _runners(objective, method, iterations, chunk, mass, max_step, s1, gtol,
                       int(retries), flow_options)
    # Starts where the model cannot be integrated are marked and left out: in a vmapped
    # batch every one of their failing solves would run to max_steps at every iteration.
    initial = np.asarray(runners["nllh"](jnp.asarray(x0[:, outer], jnp.result_type(float))))
    alive = np.flatnonzero(np.isfinite(initial))
    final_x, final_nllh = x0.copy(), np.full(count, np.nan)
    converged, failed, abandoned = (np.zeros(count, bool) for _ in range(3))
    history, escapes = np.full((count, 1), np.nan), np.zeros(count, int)
    escape_seconds = 0.0
    sizes = ((_slot_count(alive.size, 8), _slot_count(alive.size, 1)) if batch_size == "auto"
             else (_slot_count(alive.size, batch_size),))
    chooser = BatchSizeChooser(sizes)
    if compile_only:
        x0 = x0[:, outer]
        states = (_fresh_states(runners, x0[alive], alive.size)
                  if alive.size and method == "steps" else None)
        for slots in sizes if alive.size else ():
            if method == "flow":
                _compiled(runners, "flow", _padded_batch(x0[alive][:slots], slots))
            else:
                rows = np.minimum(np.arange(slots), alive.size - 1)
                _compiled(runners, "chunk", *_slot_batch(x0[alive], states, rows))
        if alive.size and escape is not None:
            _compiled(runners, "fisher", _as_batch(x0[alive][:1]))
            _compiled(runners, "nllh", _as_batch(np.repeat(x0[alive][:1], escape.points, 0)))
        if alive.size and objective is not problem:
            _compiled(runners, "complete", _as_batch(x0[alive]))
        return None
    if alive.size:
        fit_starts = functools.partial(
            _flow_in_groups if method == "flow" else _steps_in_batches, runners,
            chooser=chooser, iterations=iterations, chunk=chunk, s1=s1, gtol=gtol,
            abandon=abandon, progress=progress, began=began)
        x, value, stationary, trace, raised, dropped = fit_starts(x0[alive][:, outer])
        # A start that raised in its first chunk (or, for the flow, at all) is at its
        # start, whose nllh is known.
        value = np.where(raised & ~np.isfinite(value), initial[alive], value)
        if escape is not None:
            escape_began = time.perf_counter()
            x, value, stationary, trace, raised, dropped, escapes[alive] = _escape_plateaus(
                escape, runners, objective, fit_starts, x, value, stationary, trace, raised,
                dropped, progress)
            escape_seconds = time.perf_counter() - escape_began
        if objective is not problem:
            x = np.asarray(_call(runners, "complete", _as_batch(x)))
        final_x[alive], final_nllh[alive], converged[alive] = x, value, stationary
        failed[alive] = raised | ~np.isfinite(value)
        abandoned[alive] = dropped
        history = np.full((count, trace.shape[1]), np.nan)
        history[alive] = trace
    status = []
    for i in range(count):
        if not np.isfinite(initial[i]):
            status.append("failed_at_start")
        elif failed[i]:
            status.append("failed")
        elif abandoned[i]:
            status.append("abandoned")
        else:
            status.append("converged" if converged[i] else "max_iterations")
    seconds = time.perf_counter() - began
    return MultistartResult(
        x=final_x, nllh=final_nllh, status=status, starts=x0, history=history,
        wall_time_s=seconds, method=method, x_ids=problem.x_ids,
        info={"devices": len(jax.devices()), "iterations": iterations, "mass": mass,
              "max_step": max_step, "gtol": gtol, "retries": retries,
              "batch_size": batch_size if batch_size == "auto" else sizes[0],
              "batch_calls": {size: calls for size, calls in chooser.calls.items() if calls},
              "escape": None if escape is None else dataclasses.asdict(escape),
              "escapes": escapes.tolist(), "escape_time_s": escape_seconds,
              "abandon": None if abandon is None else dataclasses.asdict(abandon),
              "profiled": [c.parameter_id for c in getattr(objective, "inner", ())]},
    )


def _runners(problem, method, iterations, chunk, mass, max_step, s1, gtol, retries,
             flow_options=()):
    """The jitted functions of one fit configuration, built once: a second fit with the
    same settings (another seed, a benchmark's timed run) does not compile again.
    `flow_options`: ``(name, value)`` pairs passed on to `modopt.flow` (hashable, for
    the cache key).

    They are kept on `problem`, so that they and their compiled programs are freed with
    it; new bounds or a new default float type build new ones."""
    dtype = jnp.result_type(float)
    key = (method, iterations, chunk, mass, max_step, s1, gtol, retries, flow_options,
           jnp.dtype(dtype).name,
           tuple(np.asarray(problem.lower, float)), tuple(np.asarray(problem.upper, float)))
    cache = problem.__dict__.setdefault("_fit_runners", {})
    if key not in cache:
        cache[key] = _build_runners(problem, method, iterations, chunk, mass, max_step,
                                    s1, gtol, retries, flow_options, dtype)
    return cache[key]


def _build_runners(problem, method, iterations, chunk, mass, max_step, s1, gtol, retries,
                   flow_options, dtype):
    lower = jnp.asarray(problem.lower, dtype)
    upper = jnp.asarray(problem.upper, dtype)
    inputs = jnp.zeros((1, 1), dtype)
    targets = jnp.zeros((1,) + problem._evaluate("fisher_outputs", None).shape, dtype)
    output_metric = metrics.Identity()
    _loss = _NegativeLogLikelihood(len(problem.measurements))

    def nllh_of(x):
        return problem._nllh(jnp.clip(x, lower, upper))

    nominal = problem._evaluate("fisher_outputs", None)

    def fisher_of(x):
        jacobian = jax.jacfwd(problem._fisher_outputs)(jnp.clip(x, lower, upper))
        return jacobian.T @ jacobian

    runners = {"nllh": jax.jit(jax.vmap(nllh_of)), "compiled": {},
               "complete": jax.jit(jax.vmap(getattr(problem, "complete", lambda x: x))),
               "fisher": jax.jit(jax.vmap(fisher_of)),
               # nllh - loss, the same at every x
               "constant": float(problem.nllh() - _loss(nominal[None], None))}
    # Coleman-Li scaling keeps the bounds (see `modopt.Box`): without it, a start whose
    # path runs along a bound more often ends in another basin (Bruno: 57 % of 100
    # starts within 2 of the best, against 67 % with it, in a NumPy replica).
    box = Box(PetabResiduals(lower, problem), PetabResiduals(upper, problem))
    if method == "flow":
        def run_flow(x):
            solution = flow(PetabResiduals(x, problem), _loss, inputs, targets,
                            output_metric=output_metric, mass=mass, s1=s1,
                            max_steps=iterations, box=box, **dict(flow_options))
            final = solution.model.x  # clipped to `box` by `flow`
            return final, nllh_of(final), solution.riemannian_norm2, solution.losses

        runners["flow"] = jax.jit(jax.vmap(run_flow))
        return runners

    adaptive = AdaptiveMass(min_scale=1e-8, retries=retries, undamped_norm=True)
    optimizer = RiemannianSteps(1.0, output_metric=output_metric, mass=mass,
                                adaptive_mass=adaptive, max_norm=max_step, box=box)

    def run_chunk(x, state):
        # A start that has converged stops inside the chunk: alone in its batch it then
        # costs no more solves (in a larger batch it waits, masked, for the others).
        def going(carry):
            _, state, count = carry
            return (count < chunk) & ~_stationary(state, gtol)

        def body(carry):
            x, state, count = carry
            updates, state = optimizer.update(PetabResiduals(x, problem), state, _loss,
                                              inputs, targets)
            return jnp.clip(x + updates.x, lower, upper), state, count + 1

        x, state, _ = jax.lax.while_loop(going, body, (x, state, jnp.zeros((), jnp.int32)))
        return x, state, nllh_of(x)

    runners["chunk"] = jax.jit(jax.vmap(run_chunk))
    runners["init"] = jax.jit(jax.vmap(lambda x: optimizer.init(PetabResiduals(x, problem))))
    return runners


def _stationary(state, gtol):
    """Whether the steps have converged: the norm ``g^T G^-1 g`` without the damping is
    below `gtol` (with it, a large mass after rejected steps or on a plateau would make
    the norm small too), or a step that promised less than `gtol` was rejected (the
    nllh cannot be lowered by that much within the accuracy of the ODE solves)."""
    return (state.undamped_norm2 < gtol) | (~state.accepted & (state.riemannian_norm2 < gtol))


def _slot_count(count, batch_size):
    """The batch size: `batch_size` (all starts if ``None``), at most `count`, rounded up
    to a multiple of the device count so that the batch shards evenly."""
    devices = len(jax.devices())
    wanted = max(1, count if batch_size is None else min(batch_size, count))
    return -(-wanted // devices) * devices


def _as_batch(x):
    return jnp.asarray(np.asarray(x), jnp.result_type(float))


def _escape_plateaus(escape, runners, problem, fit_starts, x, value, stationary, trace,
                     raised, abandoned, progress):
    """`escape`'s rounds for the fitted starts: scan the near-kernel of the Fisher metric
    of each start that converged or was abandoned; those with a point lower by
    `escape.min_gain` are fitted again from it by `fit_starts` and keep the new end
    (never worse: the fit starts there and does not go up). **Returns:** the updated
    `x, value, stationary, trace, raised, abandoned` and the number of restarts per
    start."""
    lower, upper = np.asarray(problem.lower, float), np.asarray(problem.upper, float)
    x, value, stationary, raised, abandoned = (np.array(a) for a in (x, value, stationary,
                                                                     raised, abandoned))
    escapes = np.zeros(len(x), int)
    for round_ in range(escape.rounds):
        restart = {}  # start -> (point, its nllh)
        # Only where the fit has stopped or was abandoned as too slow (a plateau stalls a
        # start far above the best): a start still moving at max_iterations is not on a
        # plateau, and scanning it costs solves at the far ends of the box.
        for i in np.flatnonzero((stationary | abandoned) & ~raised & (escapes == round_)):
            fisher = np.asarray(_call(runners, "fisher", _as_batch(x[i:i + 1])))[0]
            if not np.all(np.isfinite(fisher)):
                continue
            point, lowest = None, value[i] - escape.min_gain
            for direction in escape.directions(fisher).T:
                line = escape.line(x[i], direction, lower, upper)
                values = np.asarray(_call(runners, "nllh", _as_batch(line)))
                best = int(np.argmin(np.where(np.isfinite(values), values, np.inf)))
                if values[best] <= lowest:
                    point, lowest = line[best], values[best]
            if point is not None:
                restart[i] = (point, lowest)
        if progress:
            print(f"  plateau escape, round {round_ + 1}: {len(restart)} start(s) restarted",
                  flush=True)
        if not restart:
            break
        ids = np.array(sorted(restart))
        x2, value2, stationary2, trace2, raised2, abandoned2 = fit_starts(
            np.array([restart[i][0] for i in ids]))
        # A restart that raised at once keeps the scanned point, whose nllh is known.
        value2 = np.where(~np.isfinite(value2), [restart[i][1] for i in ids], value2)
        x[ids], value[ids], stationary[ids], raised[ids] = x2, value2, stationary2, raised2
        abandoned[ids] = abandoned2
        extended = np.full((len(x), trace.shape[1] + trace2.shape[1]), np.nan)
        extended[:, :trace.shape[1]] = trace
        extended[ids, trace.shape[1]:] = trace2
        trace = extended
        escapes[ids] += 1
    return x, value, stationary, trace, raised, abandoned, escapes


def _padded_batch(x0, slots):
    """`x0` (at most `slots` starts) as one batch of `slots`, padded with copies of start 0
    and sharded over the devices."""
    x0 = np.asarray(x0)
    return _shard(jnp.asarray(np.concatenate([x0, np.repeat(x0[:1], slots - len(x0), 0)]),
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


def _flow_in_groups(runners, x0, chooser, *, gtol, progress, began, **_):
    """The flow for the starts `x0`, in groups of the size `chooser` picks.
    **Returns:** final x, nllh, a converged flag, the nllh history
    ``(starts, checkpoints)``, a failed flag (such a start is returned at its start,
    with a NaN nllh) and an abandoned flag (never, for the flow)."""
    parts, first = [], 0
    while first < x0.shape[0]:
        slots = chooser.next()
        group = x0[first:first + slots]
        batch = _padded_batch(group, slots)
        called = time.perf_counter()
        try:
            x, value, norm2, losses = jax.block_until_ready(_call(runners, "flow", batch))
        except Exception as error:  # noqa: BLE001 - as in `_steps_in_batches`
            if progress:
                print(f"  flow: a start raised ({type(error).__name__}); rerunning its group "
                      "start by start", flush=True)
            x, value, norm2, losses = _flow_one_by_one(runners, batch)
        chooser.record(slots, time.perf_counter() - called, len(group))
        trace = np.asarray(losses) + runners["constant"]
        trace[:, -1] = np.asarray(value)
        parts.append(tuple(np.asarray(a)[:len(group)] for a in (x, value, norm2, trace)))
        first += len(group)
        if progress:
            print(f"  flow: {first}/{x0.shape[0]} starts done, batch {slots}, "
                  f"{time.perf_counter() - began:.0f} s", flush=True)
    x, value, norm2, trace = (np.concatenate(a) for a in zip(*parts))
    failed = ~np.isfinite(value)
    # As for the steps, a flow whose nllh stopped changing over the last fifth of its
    # pseudo-time has converged too: where rates are far below the mass (a plateau) the
    # norm stays above gtol while the flow stands still.
    four_fifths = trace[:, (trace.shape[1] - 1) * 4 // 5]
    stalled = np.abs(four_fifths - value) < 1e-6 * (1 + np.abs(value))
    return (np.where(failed[:, None], x0, x), value, ((norm2 < gtol) | stalled) & ~failed,
            trace, failed, np.zeros_like(failed))


def _fresh_states(runners, x, count):
    """The steps' initial state for `count` starts (host arrays; the same for each)."""
    fresh = _call(runners, "init", _padded_batch(np.asarray(x)[:1], len(jax.devices())))
    return jax.tree.map(lambda leaf: np.repeat(np.asarray(leaf)[:1], count, 0), fresh)


def _slot_batch(xs, states, rows):
    """Rows `rows` of the host arrays `xs` and `states` as one sharded batch."""
    dtype = jnp.result_type(float)
    return (_shard(jnp.asarray(xs[rows], dtype)),
            jax.tree.map(lambda leaf: _shard(jnp.asarray(leaf[rows])), states))


def _steps_in_batches(runners, x0, chooser, *, iterations, chunk, gtol, abandon, progress,
                      began, **_):
    """The steps for the starts `x0`, one chunk of iterations per call, in batches of
    the size `chooser` picks: a call takes the unfinished starts already begun (the
    earliest first) and fills up with new ones; a start that has converged, hit
    `iterations`, raised or been abandoned (`abandon`) is done. So no start idles in a
    batch once it is done, and one slow start (a stiff ODE, many solver steps) holds up
    only its batch-mates. **Returns:** as `_flow_in_groups`."""
    count = x0.shape[0]
    states = _fresh_states(runners, x0, count)
    xs, values = np.array(x0), np.full(count, np.nan)
    previous, converged = np.full(count, np.inf), np.zeros(count, bool)
    broken, abandoned = np.zeros(count, bool), np.zeros(count, bool)
    done = np.zeros(count, int)
    traces = [[] for _ in range(count)]
    while (unfinished := np.flatnonzero(~converged & ~broken & ~abandoned
                                        & (done < iterations))).size:
        slots = chooser.next()
        ids = unfinished[np.argsort(done[unfinished] == 0, kind="stable")][:slots]
        rows = np.concatenate([ids, np.repeat(ids[:1], slots - ids.size)])  # pad: copies
        batch = _slot_batch(xs, states, rows)
        called = time.perf_counter()
        try:
            x, state, value = jax.block_until_ready(_call(runners, "chunk", *batch))
            raised = np.zeros(slots, bool)
        except Exception as error:  # noqa: BLE001 - XLA re-raises it as several types
            # Lineax raises from derivative solves inside implicit ODE solvers when one
            # start's state overflows; in a batch that would end every start. Rerun this
            # chunk start by start; the one that raises keeps its parameters and is failed.
            if progress:
                print(f"  steps: a start raised ({type(error).__name__}); rerunning its "
                      "batch start by start", flush=True)
            x, state, value, raised = _chunk_one_by_one(
                functools.partial(_call, runners, "chunk"), *batch, np.zeros(slots, bool))
        chooser.record(slots, time.perf_counter() - called, ids.size)
        live = slice(0, ids.size)
        # Steps move only to where the loss is finite, so a NaN nllh after a chunk means
        # that the start's parameters cannot be evaluated (a log observable of a state
        # the ODE solve left just below zero, for one): every further step would be
        # rejected. It keeps the parameters it had before the chunk.
        unevaluable = ~np.isfinite(np.asarray(value)[live])
        xs[ids] = np.where(unevaluable[:, None], xs[ids], np.asarray(x)[live])
        for store, leaf in zip(jax.tree.leaves(states), jax.tree.leaves(state)):
            store[ids] = np.asarray(leaf)[live]
        broken[ids] |= raised[live] | unevaluable
        value = np.where(broken[ids], values[ids], np.asarray(value)[live])
        values[ids] = value
        done[ids] += chunk
        for i, v in zip(ids, value):
            traces[i].append(v)
        # Converged: `_stationary`, or (at a bound, where the projected step is zero but
        # the gradient is not) no progress over a chunk.
        with np.errstate(invalid="ignore"):
            stalled = np.abs(previous[ids] - value) < 1e-6 * (1 + np.abs(value))
        converged[ids] = np.asarray(_stationary(state, gtol))[live] | stalled
        best = np.nanmin(values) if np.isfinite(values).any() else np.nan
        if abandon is not None:
            chunks_left = -(-(iterations - done[ids]) // chunk)
            abandoned[ids] = abandon.hopeless(value, previous[ids], best, chunks_left) & ~(
                converged[ids] | broken[ids])
        previous[ids] = value
        if progress:
            finished = converged | broken | abandoned | (done >= iterations)
            print(f"  steps: {int(finished.sum())}/{count} starts done ({int(converged.sum())} "
                  f"converged, {int(abandoned.sum())} abandoned), best nllh {best:.4f}, "
                  f"batch {slots}, {time.perf_counter() - began:.0f} s", flush=True)
    history = np.full((count, max(map(len, traces))), np.nan)
    for i, trace in enumerate(traces):
        history[i, :len(trace)] = trace
    return xs, values, converged & ~broken, history, broken, abandoned


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
    and is marked broken (a NaN nllh here) for the rest of the fit."""
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
