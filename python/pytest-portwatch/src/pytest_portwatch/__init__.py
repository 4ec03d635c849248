"""pytest-portwatch: run services under portwatch in pytest, and catch leaks.

The fixtures and options live in `pytest_portwatch.plugin`, which pytest loads
through the `pytest11` entry point once the package is installed.
"""

from .plugin import Leak, PortwatchError, Service, ServiceFactory, find_portwatch

__all__ = ["Leak", "PortwatchError", "Service", "ServiceFactory", "find_portwatch"]
__version__ = "0.1.0"
