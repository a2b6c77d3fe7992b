"""Session-wide test configuration: every test runs in float64, and each test file starts
from empty compilation caches."""

import gc

import jax
import pytest

jax.config.update("jax_enable_x64", True)


@pytest.fixture(autouse=True, scope="module")
def _fresh_compilation_caches():
    """An xdist worker runs many test files in one process. Without this, the compiled
    programs of every earlier file stay alive, and a worker once died inside XLA
    compilation late in the run, which the same test alone never does. Each file now
    compiles as it would alone."""
    yield
    jax.clear_caches()
    gc.collect()
