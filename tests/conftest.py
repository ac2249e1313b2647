"""Shared test fixtures."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """Torch on one thread: on a shared 2-core box, small matmuls with 2 contended OpenMP threads
    are ~10x slower. Opt in per module with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
