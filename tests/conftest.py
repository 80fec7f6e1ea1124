"""Fixtures shared by the tests of several parts."""

from __future__ import annotations

import pytest

from structlab.jobs import RayExecutor


@pytest.fixture(scope="session")
def ray_executor():
    """One local Ray instance of 2 CPUs for every slow test that runs jobs on Ray (it takes seconds to
    start); a task whose worker dies is run once more."""
    pytest.importorskip("ray")
    executor = RayExecutor(workers=2, retries=1)
    yield executor
    executor.close()
