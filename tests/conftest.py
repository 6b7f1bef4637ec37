"""Fixtures shared by the test modules."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One intra-op torch thread for a module (the CI box has 2 shared cores; oversubscription
    makes torch tests crawl). Torch is imported only by the modules that ask for it."""
    from training.train_utils import one_torch_thread as one_thread

    with one_thread():
        yield
