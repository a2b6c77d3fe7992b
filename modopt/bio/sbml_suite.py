"""Run SBML Test Suite semantic cases: ``python -m modopt.bio.sbml_suite CASES_DIR``.

Each case folder ``NNNNN/`` holds a model ``NNNNN-sbml-l3v2.xml`` (or an older level),
``NNNNN-settings.txt`` (output times, variables, which are amounts and which
concentrations, tolerances) and ``NNNNN-results.csv``. A case passes when every value
satisfies the suite's rule ``|computed - expected| <= absolute + relative * |expected|``
(equal non-finite values pass). Failures are printed with their reason; the last line is
``N passed, M failed``.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class SuiteSettings:
    """A case's ``-settings.txt``."""

    start: float
    duration: float
    steps: int
    variables: tuple[str, ...]
    absolute: float
    relative: float
    amount: tuple[str, ...]
    concentration: tuple[str, ...]

    @property
    def times(self) -> np.ndarray:
        return self.start + self.duration * np.arange(self.steps + 1) / self.steps


def read_settings(path: Path) -> SuiteSettings:
    """Parse a settings file. **Raises:** `ValueError` naming a missing key."""
    entries = {}
    for line in Path(path).read_text().splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            entries[key.strip()] = value.strip()

    def names(key):
        return tuple(n.strip() for n in entries.get(key, "").split(",") if n.strip())

    try:
        return SuiteSettings(
            start=float(entries["start"]), duration=float(entries["duration"]),
            steps=int(entries["steps"]), variables=names("variables"),
            absolute=float(entries["absolute"]), relative=float(entries["relative"]),
            amount=names("amount"), concentration=names("concentration"),
        )
    except KeyError as error:
        raise ValueError(f"{path}: the settings lack the key {error}") from None


def case_model(folder: Path) -> Path:
    """The case's SBML file, preferring level 3 version 2."""
    case = folder.name
    preferred = folder / f"{case}-sbml-l3v2.xml"
    if preferred.is_file():
        return preferred
    found = sorted(folder.glob(f"{case}-sbml-*.xml"))
    if not found:
        raise FileNotFoundError(f"{folder}: no {case}-sbml-*.xml model")
    return found[-1]


def read_expected(path: Path) -> np.ndarray:
    with open(path) as f:
        rows = list(csv.reader(f))
    return np.array([[float(x) for x in row[1:]] for row in rows[1:] if row], dtype=float)


@dataclass(frozen=True)
class CaseResult:
    case: str
    passed: bool
    reason: str
    seconds: float


def simulate_case(folder: Path, *, rtol: float = 1e-10, atol: float = 1e-12) -> np.ndarray:
    """Simulate one case as its settings ask. **Returns:** ``(times, variables)``."""
    from .sbml import read_sbml

    settings = read_settings(folder / f"{folder.name}-settings.txt")
    model = read_sbml(case_model(folder))
    simulation = model.simulate(settings.times, rtol=rtol, atol=atol)
    columns = []
    for name in settings.variables:
        if name in settings.amount and name in model.species:
            column = simulation.amounts[name]
        elif name in settings.concentration and name in model.species:
            column = simulation.concentrations[name]
        elif name in simulation.values:
            column = simulation.values[name]
        else:
            raise KeyError(f"the settings ask for {name!r}, which the model does not define")
        columns.append(np.broadcast_to(np.asarray(column, float), settings.times.shape))
    return np.stack(columns, axis=1)


def compare(computed: np.ndarray, expected: np.ndarray, settings: SuiteSettings) -> str:
    """The suite's rule. **Returns:** ``""`` if the case passes, else the reason."""
    if computed.shape != expected.shape:
        return f"shape {computed.shape}, expected {expected.shape}"
    same = (computed == expected) | (np.isnan(computed) & np.isnan(expected))
    bound = settings.absolute + settings.relative * np.abs(expected)
    with np.errstate(invalid="ignore"):  # inf - inf where both are infinite
        ok = same | (np.abs(computed - expected) <= bound)
    if ok.all():
        return ""
    row, col = np.argwhere(~ok)[0]
    return (f"{int((~ok).sum())} values out of tolerance; first: {settings.variables[col]} at "
            f"t={settings.times[row]:g}: {computed[row, col]:.10g}, expected "
            f"{expected[row, col]:.10g}")


def run_case(folder: Path) -> CaseResult:
    """Simulate and judge one case; any exception becomes the failure reason."""
    began = time.perf_counter()
    folder = Path(folder)
    try:
        settings = read_settings(folder / f"{folder.name}-settings.txt")
        computed = simulate_case(folder)
        reason = compare(computed, read_expected(folder / f"{folder.name}-results.csv"),
                         settings)
    except Exception as error:  # noqa: BLE001 - one bad case must not stop the run
        reason = f"{type(error).__name__}: {error}"
    finally:
        import jax

        jax.clear_caches()  # every case compiles new functions; do not keep them all
    return CaseResult(folder.name, not reason, reason.replace("\n", " ")[:300],
                      time.perf_counter() - began)


def case_folders(root: Path) -> list[Path]:
    return sorted(p for p in Path(root).iterdir() if p.is_dir() and p.name.isdigit())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modopt.bio.sbml_suite",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("cases_dir", type=Path, help="folder of NNNNN/ case folders")
    parser.add_argument("cases", nargs="*", help="only these case numbers")
    parser.add_argument("--verbose", action="store_true", help="print every case")
    args = parser.parse_args(argv)
    import jax

    jax.config.update("jax_enable_x64", True)
    if not args.cases_dir.is_dir():
        raise SystemExit(f"sbml_suite: no folder {args.cases_dir}")
    folders = case_folders(args.cases_dir)
    if args.cases:
        wanted = {c.zfill(5) for c in args.cases}
        folders = [f for f in folders if f.name in wanted]
    results = []
    for folder in folders:
        result = run_case(folder)
        results.append(result)
        if not result.passed:
            print(f"FAIL {result.case}: {result.reason}", flush=True)
        elif args.verbose:
            print(f"pass {result.case} ({result.seconds:.1f} s)", flush=True)
    passed = sum(r.passed for r in results)
    print(f"{passed} passed, {len(results) - passed} failed")
    return 0 if passed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
