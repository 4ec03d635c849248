"""One gunicorn service for the whole test session, run by the pytest-portwatch plugin
(python/pytest-portwatch): it frees the port from any leftover, starts gunicorn under
`portwatch run`, returns once /api/health answers 2xx, and at the end stops gunicorn
and everything it started and checks the port is free again.

Settings (environment): PORTWATCH (the binary; default: portwatch on PATH),
APP_PORT (default 5050).
"""

import os
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def base_url(portwatch_session_service):
    port = int(os.environ.get("APP_PORT", "5050"))
    service = portwatch_session_service(
        # The interpreter running pytest, so gunicorn sees the same Flask.
        [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "2", "app:app"],
        ports=port,
        health=f"http://127.0.0.1:{port}/api/health",
        free=True,
        cwd=Path(__file__).parent,
    )
    return service.url
