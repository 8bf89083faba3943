"""Fixtures of the Python client tests (run them with tests/python/run.sh)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from harness import Broker, tidelogd_bin


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A fresh tidelogd for one test; stopped with SIGTERM afterwards, exit 0 asserted."""
    running = Broker(tidelogd_bin(), tmp_path)
    try:
        running.start()
        yield running
        running.stop()
    finally:
        if running.channel is not None:
            running.channel.close()
        running.kill()
