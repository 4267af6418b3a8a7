"""tests/network: run numpy with one OpenBLAS thread (restored afterwards).

OpenBLAS workers spin while waiting; on a 2-core CI box that also runs brokers, KataGo children or
other jobs this made the reference tests 5-7x slower. One thread is fast and predictable.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from agent.backends.numpy.runtime import set_blas_threads


@pytest.fixture(autouse=True, scope="module")
def _single_blas_thread() -> Iterator[None]:
    changed = set_blas_threads(1)
    yield
    if changed:
        set_blas_threads(os.cpu_count() or 1)
