"""Autoencoder tests run their small convolutions on one thread.

On a loaded machine, a second thread per tiny convolution mostly waits for a CPU, which made these
tests an order of magnitude slower; one thread is as fast as two for models this small.
"""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
