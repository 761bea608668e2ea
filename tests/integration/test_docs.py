"""/docs and /redoc of a real API work offline: every asset they name is served by the farm."""

from __future__ import annotations

import re

import httpx
import pytest

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_assets_are_local_and_answer(api_url: str, page: str) -> None:
    html = httpx.get(f"{api_url}{page}", timeout=30)
    assert html.status_code == 200
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html.text)
    urls += re.findall(r"""url: ?["']([^"']+)["']""", html.text)  # the schema Swagger loads
    assert urls, html.text
    for url in urls:
        assert url.startswith("/"), f"{page} names {url}, not one the farm serves"
        assert httpx.get(f"{api_url}{url}", timeout=30).status_code == 200, url
    assert (
        httpx.get(f"{api_url}/openapi.json", timeout=30).json()["components"]["securitySchemes"][
            "bearerAuth"
        ]["scheme"]
        == "bearer"
    )
