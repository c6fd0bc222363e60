"""The dashboard's per-row retry retries that row only, even when other entries of the
pillow are due (issue 12), and leaves an entry that cannot succeed parked (issue 20)."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from changefeed.change import Change, InvalidChangeError
from changefeed.errors import PARKED
from changefeed.failures import INVALID_STUB
from tests.web.conftest import Site


def test_row_retry_leaves_other_due_entries_alone(start_site: Callable[..., Site]) -> None:
    site = start_site()
    site.broken.update({"asked", "other"})
    site.publish("asked", "other")
    site.run_pillow()
    queue = site.app.error_queue
    by_doc = {r.document_id: r.id for r in queue.list()}
    queue.make_due(ids=[by_doc["other"]])  # due now, like the row asked for
    before = queue.get(by_doc["other"])
    site.broken.clear()  # both would succeed if retried
    with httpx.Client(base_url=site.url, timeout=10) as client:
        done = client.post(
            "/api/errors/retry", json={"ids": [by_doc["asked"]]}, headers={"Origin": site.url}
        ).json()
    assert done["resolved"] == [by_doc["asked"]]
    assert done["results"] == {"cases": {"resolved": 1, "failed": 0}}
    after = queue.get(by_doc["other"])
    assert after is not None and before is not None
    assert (after.attempts, after.next_attempt_at) == (before.attempts, before.next_attempt_at)


def test_row_retry_of_an_invalid_stub_leaves_it_parked(start_site: Callable[..., Site]) -> None:
    site = start_site()
    queue = site.app.error_queue
    junk = Change.from_raw("case", 0, 0, b"{not json", key="junk")
    queue.add("cases", junk, INVALID_STUB, InvalidChangeError(junk.error), retryable=False)
    (entry,) = queue.list()
    with httpx.Client(base_url=site.url, timeout=10) as client:
        done = client.post(
            "/api/errors/retry", json={"ids": [entry.id]}, headers={"Origin": site.url}
        ).json()
    assert done["results"] == {"cases": {"resolved": 0, "failed": 1}}
    after = queue.get(entry.id)
    assert after is not None and (after.status, after.attempts) == (PARKED, 2)
