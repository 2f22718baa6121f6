"""Post the digest where teams already look: a Slack-compatible incoming webhook, or an
Alertmanager-style webhook receiver.

A failed post (connection error, timeout, any status but 2xx) is retried a bounded number
of times with exponential backoff; when every attempt fails,
:class:`fleetwarden.errors.ExternalError` says how many attempts were made and the last
failure (its cause kept as ``__cause__``). The caller writes the digest somewhere first,
so nothing is lost silently.

Payloads:

- ``slack``: ``{"text": MARKDOWN}`` (what Slack, Mattermost and Rocket.Chat incoming
  webhooks take), cut to :data:`SLACK_TEXT_LIMIT` characters with a note when longer;
- ``alertmanager``: the JSON body Alertmanager sends to a ``webhook_config`` receiver
  (version 4), one ``FleetwardenDigest`` alert whose annotations carry the headline
  (``summary``) and the digest in Markdown (``description``).
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

from fleetwarden import errors

log = logging.getLogger(__name__)

SLACK_TEXT_LIMIT = 39000
DEFAULT_RETRIES = 3
DEFAULT_BACKOFF_SECONDS = 1.0
DEFAULT_TIMEOUT_SECONDS = 10.0


def slack_payload(markdown: str) -> dict[str, Any]:
    if len(markdown) > SLACK_TEXT_LIMIT:
        markdown = markdown[:SLACK_TEXT_LIMIT] + "\n\n_(cut: the full digest is in the job's output)_"
    return {"text": markdown}


def alertmanager_payload(markdown: str, *, summary: str, labels: Mapping[str, str], starts_at: str,
                         ends_at: str) -> dict[str, Any]:
    """The Alertmanager webhook body (version 4) with one resolved-at-the-period's-end alert."""
    all_labels = {"alertname": "FleetwardenDigest", "severity": "info", **labels}
    annotations = {"summary": summary, "description": markdown}
    return {
        "version": "4", "groupKey": "{}:{alertname=\"FleetwardenDigest\"}", "truncatedAlerts": 0,
        "status": "firing", "receiver": "fleetwarden-digest", "groupLabels": {"alertname": "FleetwardenDigest"},
        "commonLabels": all_labels, "commonAnnotations": annotations, "externalURL": "",
        "alerts": [{"status": "firing", "labels": all_labels, "annotations": annotations,
                    "startsAt": starts_at, "endsAt": ends_at, "generatorURL": "", "fingerprint": ""}],
    }


def _redact(url: str) -> str:
    """The scheme and host of a webhook URL: its path is a secret (Slack's is the token)."""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}/..."


def post_json(url: str, payload: Mapping[str, Any], *, retries: int = DEFAULT_RETRIES,
              backoff: float = DEFAULT_BACKOFF_SECONDS, timeout: float = DEFAULT_TIMEOUT_SECONDS,
              sleep: Callable[[float], None] = time.sleep) -> int:
    """POST ``payload`` as JSON; returns the number of attempts it took. Raises
    :class:`errors.ExternalError` after ``1 + retries`` failed attempts, waiting
    ``backoff * 2**i`` seconds before retry ``i``."""
    data = json.dumps(payload).encode()
    where = _redact(url)
    last: Exception | None = None
    attempts = 1 + max(0, retries)
    for attempt in range(attempts):
        if attempt:
            delay = backoff * 2 ** (attempt - 1)
            log.warning("posting the digest to %s failed (%s); retry %d of %d in %.1fs",
                        where, last, attempt, retries, delay)
            sleep(delay)
        request = urllib.request.Request(url, data=data, method="POST",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - configured URL
                response.read()
            return attempt + 1
        except urllib.error.HTTPError as exc:
            last = exc
            last_text = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            last = exc
            last_text = str(getattr(exc, "reason", exc))
    raise errors.ExternalError(
        f"posting the digest to {where} failed {attempts} times (last: {last_text})") from last
