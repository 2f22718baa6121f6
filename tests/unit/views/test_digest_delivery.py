"""Posting the digest: bounded retries with backoff, a clear error, nothing lost."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator

import pytest

from fleetwarden import errors
from fleetwarden.adapters import webhook


class _Receiver(http.server.BaseHTTPRequestHandler):
    statuses: list[int] = []
    bodies: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).bodies.append(json.loads(body))
        status = type(self).statuses.pop(0) if type(self).statuses else 200
        self.send_response(status)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, type[_Receiver]]]:
    handler = type("Handler", (_Receiver,), {"statuses": [], "bodies": []})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hooks/T000/SECRET", handler
    server.shutdown()
    server.server_close()


def test_a_failing_webhook_is_retried_with_backoff_until_it_answers(receiver):
    """Two 500s, then 200: three attempts, waiting 1 s then 2 s."""
    url, handler = receiver
    handler.statuses = [500, 500]
    waits: list[float] = []
    assert webhook.post_json(url, webhook.slack_payload("# digest"), retries=3, backoff=1.0, sleep=waits.append) == 3
    assert waits == [1.0, 2.0]
    assert handler.bodies == [{"text": "# digest"}] * 3


def test_a_webhook_that_keeps_failing_is_an_error_after_bounded_retries(receiver):
    """Every attempt 500: 1 + retries attempts, then an ExternalError that hides the URL's secret path."""
    url, handler = receiver
    handler.statuses = [500] * 10
    waits: list[float] = []
    with pytest.raises(errors.ExternalError, match="failed 3 times") as caught:
        webhook.post_json(url, {"text": "x"}, retries=2, backoff=0.5, sleep=waits.append)
    assert waits == [0.5, 1.0] and len(handler.bodies) == 3
    assert "HTTP 500" in str(caught.value) and "SECRET" not in str(caught.value)


def test_an_unreachable_webhook_is_an_error():
    with pytest.raises(errors.ExternalError, match="failed 2 times"):
        webhook.post_json("http://127.0.0.1:9/x", {"text": "x"}, retries=1, sleep=lambda _s: None, timeout=2)


def test_payloads():
    """Slack takes text (cut when too long); Alertmanager receivers take the v4 webhook body."""
    assert webhook.slack_payload("a" * 50000)["text"].endswith("the full digest is in the job's output)_")
    body = webhook.alertmanager_payload("# d", summary="Total", labels={"source": "events"},
                                        starts_at="2026-01-01T00:00:00Z", ends_at="2026-01-15T00:00:00Z")
    assert body["version"] == "4" and body["status"] == "firing"
    alert = body["alerts"][0]
    assert alert["labels"]["alertname"] == "FleetwardenDigest" and alert["annotations"]["description"] == "# d"
