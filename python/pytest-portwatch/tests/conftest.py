"""Tests of the plugin itself: real services, real portwatch (PORTWATCH or PATH)."""

import random
import socket

import pytest

pytest_plugins = ["pytester"]


def _bindable(port):
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        s = socket.socket(family, socket.SOCK_STREAM)
        try:
            s.bind((host, port))
        except OSError:
            return False
        finally:
            s.close()
    return True


@pytest.fixture
def free_port():
    """A port free now, below the ephemeral range (no outgoing connection takes it)."""
    start = random.randrange(21000, 31000)
    for port in range(start, start + 2000):
        if _bindable(port):
            return port
    pytest.fail("no free port")
