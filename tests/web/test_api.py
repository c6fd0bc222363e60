"""The dashboard's HTTP API and its access rules, against a real uvicorn server."""

from __future__ import annotations

import threading
from collections.abc import Callable

import httpx
import pytest

from changefeed.change import Change, ChangeMeta
from changefeed.cli import main
from changefeed.failures import FETCH
from changefeed.stores.base import UnknownDocumentStoreError
from tests.harness._util import wait_until
from tests.web.conftest import Site

TOKEN = "s3cret-token-for-tests"


def test_api_reports_pillows_errors_and_history(start_site: Callable[..., Site]) -> None:
    site = start_site()
    site.broken.add("bad-1")
    site.publish("good-1", "bad-1", "good-2")
    site.run_pillow()
    with httpx.Client(base_url=site.url, timeout=10) as client:
        pillows = client.get("/api/pillows").json()["pillows"]
        assert [p["pillow"] for p in pillows] == ["cases"]
        errors = client.get("/api/errors").json()
        assert [e["document_id"] for e in errors["errors"]] == ["bad-1"]
        assert errors["counts"]["cases"]["pending"] == 1
        detail = client.get(f"/api/errors/{errors['errors'][0]['id']}").json()
        assert "RuntimeError: search index refused bad-1" in detail["traceback"]
        assert '"document_id":"bad-1"' in detail["stub"]
        assert client.get("/api/errors/999").status_code == 404
        assert client.get("/api/errors?pillow=nope").status_code == 404
        assert client.get("/api/errors?limit=x").status_code == 400
        assert client.get("/api/checkpoints/history").json() == {"history": []}
        page = client.get("/")
        assert page.status_code == 200 and "changefeed" in page.text
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assert client.get("/static/app.js").status_code == 200


def test_retry_requires_same_origin_json(start_site: Callable[..., Site]) -> None:
    site = start_site()
    site.broken.add("bad-1")
    site.publish("bad-1")
    site.run_pillow()
    with httpx.Client(base_url=site.url, timeout=10) as client:
        error_id = client.get("/api/errors").json()["errors"][0]["id"]
        body = {"ids": [error_id]}
        assert client.post("/api/errors/retry", json=body).status_code == 403  # no Origin
        evil = {"Origin": "http://evil.example"}
        assert client.post("/api/errors/retry", json=body, headers=evil).status_code == 403
        same = {"Origin": site.url}
        form = client.post("/api/errors/retry", data={"ids": "1"}, headers=same)
        assert form.status_code == 415
        bad = client.post("/api/errors/retry", json={"ids": ["1"]}, headers=same)
        assert bad.status_code == 400
        still = client.post("/api/errors/retry", json=body, headers=same).json()
        assert still["open"] == [error_id]
        site.broken.clear()
        done = client.post("/api/errors/retry", json=body, headers=same).json()
        assert done["resolved"] == [error_id]
        assert done["results"] == {"cases": {"resolved": 1, "failed": 0}}
        assert client.get("/api/errors").json()["errors"] == []
        assert client.get("/api/pillows").status_code == 200


def test_pillow_status_warns_of_changes_waiting_for_an_unregistered_store(
    start_site: Callable[..., Site],
) -> None:
    site = start_site()
    missing = UnknownDocumentStoreError("no document store for data_source_name='forms'")
    for doc_id in ("f1", "f2"):
        change = Change("case", 0, 0, ChangeMeta(doc_id, "sql", "forms"))
        site.app.error_queue.add("cases", change, FETCH, missing)
    with httpx.Client(base_url=site.url, timeout=10) as client:

        def notes() -> list[str]:
            (pillow,) = client.get("/api/pillows").json()["pillows"]
            return list(pillow["notes"])

        wait_until(lambda: bool(notes()), "the next status sample")
        (note,) = notes()
    assert note.startswith("2 changes wait in the error queue: no document store for")
    assert note.endswith("changefeed errors retry --pillow cases")


def test_foreign_host_header_refused_without_token(start_site: Callable[..., Site]) -> None:
    site = start_site()
    resp = httpx.get(site.url + "/api/pillows", headers={"Host": "attacker.example"}, timeout=10)
    assert resp.status_code == 403


def test_token_required_when_configured(start_site: Callable[..., Site]) -> None:
    site = start_site(token=TOKEN)
    with httpx.Client(base_url=site.url, timeout=10) as client:
        assert client.get("/api/pillows").status_code == 401
        assert client.get("/").status_code == 401
        assert (
            client.get("/api/pillows", headers={"Authorization": "Bearer wrong"}).status_code == 401
        )
        ok = client.get("/api/pillows", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200
        assert client.get("/api/pillows", headers={"X-Changefeed-Token": TOKEN}).status_code == 200
        # ?token= on the page: moved into an HttpOnly cookie, dropped from the URL.
        first = client.get(f"/?token={TOKEN}", follow_redirects=False)
        assert first.status_code == 303 and first.headers["location"] == "/"
        assert "httponly" in first.headers["set-cookie"].lower()
        assert client.get("/").status_code == 200  # the client now sends the cookie
        assert client.get("/api/pillows").status_code == 200


def test_live_stream_sends_published_changes(start_site: Callable[..., Site]) -> None:
    site = start_site()
    lines: list[str] = []
    hello = threading.Event()
    got = threading.Event()

    def read() -> None:
        with httpx.stream("GET", site.url + "/api/stream", timeout=30) as resp:
            for line in resp.iter_lines():
                lines.append(line)
                if line == "event: hello":
                    hello.set()
                if "stream-doc" in line:
                    got.set()
                    return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert hello.wait(20)
    site.publish("stream-doc")
    assert got.wait(20), lines
    data = next(line for line in lines if "stream-doc" in line)
    assert '"document_type":"case"' in data and '"topic":"case"' in data


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["dashboard", "--host", "0.0.0.0"], "give --token"),
        (["dashboard", "--host", "0.0.0.0", "--token", "short"], "at least 16"),
    ],
)
def test_cli_refuses_unsafe_binding(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: object
) -> None:
    with pytest.raises(SystemExit) as exc:
        main([f"--log=sqlite:///{tmp_path}/log.db", f"--state=sqlite:///{tmp_path}/s.db", *args])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
