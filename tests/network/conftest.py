"""tests/network: run numpy with one OpenBLAS thread (restored afterwards).

OpenBLAS workers spin while waiting; on a 2-core CI box that also runs brokers, KataGo children or
other jobs this made the reference tests 5-7x slower. One thread is fast and predictable.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from network_refdata import one_blas_thread


@pytest.fixture(autouse=True, scope="module")
def _single_blas_thread() -> Iterator[None]:
    with one_blas_thread():
        yield
