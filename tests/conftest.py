"""Shared fixtures: free loopback ports and short temporary paths for unix sockets."""

from __future__ import annotations

import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short directory path: unix socket paths are limited to ~107 bytes."""
    with tempfile.TemporaryDirectory(prefix="sc-", dir="/tmp") as d:
        yield Path(d)
