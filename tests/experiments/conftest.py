"""The CLIs end to end: every test here trains real (tiny) models through experiments/*.py, so
they carry the ``slow`` marker (``pytest -m "not slow"`` leaves them out for a quick loop)."""
import pytest


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/experiments/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.slow)
