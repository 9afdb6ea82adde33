"""Shared pytest fixtures."""
import pytest
import torch


@pytest.fixture
def one_thread():
    """One torch thread for the test, restored afterwards.  The tests use small tensors in long loops, where two
    OpenMP threads on a busy 2-core machine spin-wait and make every operation up to ~10x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
