"""What the REST tests share: the API's base path and reading the JSON error of a request that must fail."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from tornado.httpclient import HTTPClientError

API = "cellpipe/api"
Fetch = Callable[..., Any]


async def error_of(request: Any) -> tuple[int, dict[str, Any]]:
    """The status and JSON body of a request that must fail."""
    with pytest.raises(HTTPClientError) as caught:
        await request
    response = caught.value.response
    assert response is not None
    assert response.headers["Content-Type"].startswith("application/json")
    return caught.value.code, json.loads(response.body)
