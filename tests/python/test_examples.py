"""The runnable examples in examples/ work against the real broker as a user runs them:
examples/python/quickstart.py generates its own stubs from the .proto, publishes,
subscribes with a filter and works a queue, then cleans up."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from harness import Broker

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_TIMEOUT = 120.0


def test_python_quickstart_runs_against_the_broker(broker: Broker) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "python" / "quickstart.py"),
         "--server", broker.grpc_addr],
        capture_output=True, text=True, timeout=EXAMPLE_TIMEOUT,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    lines = done.stdout.splitlines()
    assert lines[-1] == "quickstart: ok", done.stdout
    assert sum(line.startswith("published order-") for line in lines) == 6, done.stdout
    # Only the "big" orders (odd numbers) pass the subscription's filter.
    subscribed = [line.split()[1] for line in lines if line.startswith("subscribed: ")]
    assert subscribed == ["order-1", "order-3", "order-5"], done.stdout
    assert any("received 6, acked 6, ready 0, unacked 0" in line for line in lines), done.stdout
    # It cleaned up after itself.
    from tidelog.v1 import tidelog_pb2 as pb
    topics = broker.admin.ListTopics(pb.ListTopicsRequest(), timeout=20.0).topics
    assert [t.name for t in topics] == [], done.stdout


def test_python_quickstart_names_the_fix_when_no_broker_answers(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "python" / "quickstart.py"),
         "--server", "127.0.0.1:9", "--connect-timeout", "1"],
        capture_output=True, text=True, timeout=EXAMPLE_TIMEOUT,
    )
    assert done.returncode != 0
    assert "no tidelogd answers at 127.0.0.1:9" in done.stderr, done.stderr
    assert "cargo run --release --bin tidelogd" in done.stderr, done.stderr
