"""The real tidelogd for the Python client tests: started on 127.0.0.1:0 with its own
data directory, found ready by the line it prints, reached through grpcio stubs
generated from the .proto alone, stopped with SIGTERM.

Run the tests with tests/python/run.sh, which generates the stubs (package tidelog.v1
on PYTHONPATH) and sets TIDELOGD_BIN.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
from pathlib import Path
from typing import IO, Optional

import grpc
import pytest

try:
    from tidelog.v1 import tidelog_pb2_grpc
except ImportError as error:  # pragma: no cover - only without run.sh
    raise ImportError(
        "the stubs generated from proto/proto/tidelog/v1/tidelog.proto are not on "
        "PYTHONPATH: run the tests with tests/python/run.sh"
    ) from error

# How long tidelogd may take to print its ready line (recovery included).
READY_TIMEOUT = 30.0
# How long a SIGTERM'd tidelogd may take to exit.
STOP_TIMEOUT = 20.0
# How long a new channel may take to connect.
CONNECT_TIMEOUT = 10.0
# The line tidelogd prints to stdout once both sockets are bound:
#   tidelogd ready grpc=ADDR metrics=ADDR data=DIR
READY_PREFIX = "tidelogd ready "

CHANNEL_OPTIONS = [
    # Fetch answers can reach the server's 8 MiB read cap; grpcio's default is 4 MiB.
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.max_send_message_length", 64 << 20),
    # Never route 127.0.0.1 through an http_proxy from the environment.
    ("grpc.enable_http_proxy", 0),
]


def tidelogd_bin() -> Path:
    """$TIDELOGD_BIN (run.sh always sets it), else the cargo debug build."""
    if os.environ.get("TIDELOGD_BIN"):
        path = Path(os.environ["TIDELOGD_BIN"])
    else:
        root = Path(__file__).resolve().parents[2]
        target = Path(os.environ.get("CARGO_TARGET_DIR") or root / "target")
        path = (target if target.is_absolute() else root / target) / "debug" / "tidelogd"
    if not os.access(path, os.X_OK):
        pytest.fail(f"no tidelogd at {path}: run tests/python/run.sh (it builds one) "
                    "or set TIDELOGD_BIN", pytrace=False)
    return path


class Broker:
    """A running tidelogd and one channel to it, with the four service stubs."""

    def __init__(self, binary: Path, workdir: Path, extra_args: tuple[str, ...] = (),
                 credentials: Optional[grpc.ChannelCredentials] = None) -> None:
        # With credentials (grpc.ssl_channel_credentials) the channel speaks TLS.
        self.credentials = credentials
        self.binary = binary
        self.extra_args = list(extra_args)
        self.data_dir = workdir / "data"
        self.log_path = workdir / "tidelogd.stderr.log"
        self.process: Optional[subprocess.Popen[bytes]] = None
        self.grpc_addr = ""
        self.metrics_addr = ""
        self.channel: Optional[grpc.Channel] = None

    def log(self) -> str:
        """Everything tidelogd wrote to stderr so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [str(self.binary), "--data-dir", str(self.data_dir),
                 "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
                 *self.extra_args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                env={**os.environ, "RUST_LOG": "info"},
            )
        assert self.process.stdout is not None
        lines: queue.Queue[Optional[str]] = queue.Queue()
        # Reads stdout for the life of the process so it never blocks on a full pipe.
        threading.Thread(target=_drain, args=(self.process.stdout, lines), daemon=True).start()
        try:
            line = lines.get(timeout=READY_TIMEOUT)
        except queue.Empty:
            self.kill()
            pytest.fail(f"tidelogd printed no ready line within {READY_TIMEOUT} s; "
                        f"its log:\n{self.log()}", pytrace=False)
        if line is None:
            status = self.process.wait(timeout=STOP_TIMEOUT)
            pytest.fail(f"tidelogd exited with status {status} before its ready line; "
                        f"its log:\n{self.log()}", pytrace=False)
        self.grpc_addr = _field(line, "grpc=")
        self.metrics_addr = _field(line, "metrics=")
        if self.credentials is None:
            self.channel = grpc.insecure_channel(self.grpc_addr, options=CHANNEL_OPTIONS)
        else:
            self.channel = grpc.secure_channel(self.grpc_addr, self.credentials,
                                               options=CHANNEL_OPTIONS)
        grpc.channel_ready_future(self.channel).result(timeout=CONNECT_TIMEOUT)
        self.admin = tidelog_pb2_grpc.AdminStub(self.channel)
        self.publisher = tidelog_pb2_grpc.PublisherStub(self.channel)
        self.consumer = tidelog_pb2_grpc.ConsumerStub(self.channel)
        self.groups = tidelog_pb2_grpc.GroupsStub(self.channel)

    def stop(self) -> None:
        """SIGTERM; asserts tidelogd exits with status 0 within STOP_TIMEOUT."""
        if self.channel is not None:
            self.channel.close()
            self.channel = None
        process, self.process = self.process, None
        if process is None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            status = process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            pytest.fail(f"tidelogd did not exit within {STOP_TIMEOUT} s of SIGTERM; "
                        f"its log:\n{self.log()}", pytrace=False)
        assert status == 0, f"tidelogd exited with status {status} after SIGTERM; its log:\n{self.log()}"

    def kill(self) -> None:
        """SIGKILL, if still running (the fixture's clean-up after a failure)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


def _drain(stream: IO[bytes], lines: "queue.Queue[Optional[str]]") -> None:
    """Passes ready lines on, and None at end of file."""
    for raw in stream:
        line = raw.decode(errors="replace").rstrip("\n")
        if line.startswith(READY_PREFIX):
            lines.put(line)
    lines.put(None)


def _field(line: str, name: str) -> str:
    """The value of `name` (e.g. "grpc=") in the ready line."""
    for part in line.split():
        if part.startswith(name) and len(part) > len(name):
            return part[len(name):]
    pytest.fail(f"no {name} in tidelogd's ready line {line!r}", pytrace=False)
