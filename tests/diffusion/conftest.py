"""Shared test settings for ditlab.diffusion."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """These tests run many small ops: one intra-op thread avoids thread hand-off overhead on busy CPUs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
