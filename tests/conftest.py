"""Shared pytest fixtures and the hypothesis profile of the property tests (tests/test_properties.py)."""
import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# "ci" (the default, what `make test` runs): few examples, derandomized (the same examples on every run, so that the
# unit tests are reproducible), no example database written to disk, no per-example deadline (a busy 2-core machine).
# HYPOTHESIS_PROFILE=dev explores more, with fresh random examples each run.
settings.register_profile("ci", max_examples=15, derandomize=True, database=None, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("dev", max_examples=300, deadline=None, database=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def one_thread():
    """One torch thread for the test, restored afterwards.  The tests use small tensors in long loops, where two
    OpenMP threads on a busy 2-core machine spin-wait and make every operation up to ~10x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
