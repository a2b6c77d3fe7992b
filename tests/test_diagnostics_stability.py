"""The stability experiment of Theorem 3, run through `modopt run` on a small regression
problem for four masses and two sample counts: the measured output difference (two
independent flows) stays below the bound built from the contraction quantities (whose
parts are checked against dense references in test_diagnostics_contraction.py)."""

import json
import subprocess
import sys

import jax.numpy as jnp
import jax.random as jr
import pytest

import modopt
from modopt.diagnostics import replace_one_sample


def test_measured_difference_stays_below_the_bound_for_four_masses(tmp_path):
    config = tmp_path / "stability.toml"
    config.write_text('example = "stability"\nmasses = [0.01, 0.1, 1.0, 10.0]\n'
                      "samples = [8, 16]\nwidth = 24\ns1 = 6.0\n")
    run = subprocess.run([sys.executable, "-m", "modopt.cli", "run", str(config), "--out",
                          str(tmp_path)], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout + run.stderr
    summary = json.loads((tmp_path / "stability/summary.json").read_text())
    rows = summary["rows"]
    assert len(rows) == 8
    for row in rows:
        assert row["converged"]
        assert row["xi_min"] > 0 and row["bound"] < float("inf")
        assert 0 < row["max_difference"] <= row["bound"], row
    assert summary["all_below_bound"]
    assert (tmp_path / "stability/stability.png").stat().st_size > 0


def test_replace_one_sample_rejects_bad_arguments():
    x, y = jnp.zeros((4, 2)), jnp.zeros((4, 1))
    model = modopt.mlp([2, 3, 1], key=jr.PRNGKey(0))
    options = dict(output_metric=modopt.metrics.Identity())
    with pytest.raises(ValueError, match="index 4"):
        replace_one_sample(model, x, y, x[0], y[0], mass=1.0, index=4, **options)
    with pytest.raises(ValueError, match="mass must be positive"):
        replace_one_sample(model, x, y, x[0], y[0], mass=0.0, **options)
