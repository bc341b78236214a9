"""The Jupyter server the REST tests talk to: pytest-jupyter's, with cellpipe's server extension enabled."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture
def jp_server_config() -> dict[str, Any]:
    return {"ServerApp": {"jpserver_extensions": {"jupyter_ext": True}}}
