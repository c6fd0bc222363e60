"""Dashboard edges: ids beyond 64 bits are a 400 (not a 500), and token-mode redirects stay
on the dashboard's own origin."""

from __future__ import annotations

import http.client
from collections.abc import Callable
from urllib.parse import urlsplit

import httpx
import pytest

from tests.web.conftest import Site

TOKEN = "s3cret-token-for-value-checks"


@pytest.mark.parametrize("error_id", [2**63, 2**64, 10**30], ids=["2^63", "2^64", "10^30"])
def test_error_ids_beyond_int64_are_400(start_site: Callable[..., Site], error_id: int) -> None:
    site = start_site()
    with httpx.Client(base_url=site.url) as client:
        assert client.get(f"/api/errors/{error_id}").status_code == 400
        assert client.get(f"/api/errors/{2**63 - 1}").status_code == 404
        response = client.post(
            "/api/errors/retry",
            json={"ids": [error_id]},
            headers={"Origin": site.url},
        )
        assert response.status_code == 400, response.text
        assert "ids" in response.json()["error"]


@pytest.mark.parametrize(
    "path",
    ["//evil.example/", "//evil.example/x/", "/\\evil.example/", "///evil.example/"],
)
def test_token_redirect_stays_on_the_same_origin(
    start_site: Callable[..., Site], path: str
) -> None:
    site = start_site(token=TOKEN)
    host = urlsplit(site.url)
    conn = http.client.HTTPConnection(host.hostname or "", host.port, timeout=10)
    try:
        conn.request("GET", f"{path}?token={TOKEN}")
        response = conn.getresponse()
        response.read()
    finally:
        conn.close()
    assert response.status == 303
    location = response.getheader("location") or ""
    assert location.startswith("/") and not location.startswith(("//", "/\\")), location
    assert not urlsplit(location).netloc, location
    assert "token" not in location
