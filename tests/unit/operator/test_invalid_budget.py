"""An AgentBudget that does not validate: Ready=False with reason InvalidSpec naming the field,
one Warning Event InvalidSpec, no evaluation and no action; never a raw validation error."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from test_runtime_cycle import NOW, CountingFetcher, FakeKube, body, deployment, make

from fleetwarden.core import evaluate, status, timefmt


def invalid(generation: int = 1, amount: float = 0) -> dict[str, Any]:
    doc = body(0)
    doc["metadata"]["generation"] = generation
    doc["spec"]["limits"] = [{"window": "hour", "amountUSD": amount}]
    return doc


def ready(status: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == "Ready")


def test_an_invalid_budget_says_why_in_its_status_and_an_event(caplog: pytest.LogCaptureFixture) -> None:
    """Ready=False, InvalidSpec, one line naming the field; a Warning Event; nothing scaled or raised."""
    k = FakeKube()
    fetcher = CountingFetcher(hour_spend=2.0)  # would kill a valid budget
    with caplog.at_level(logging.WARNING, logger="fleetwarden.handlers.runtime"):
        decision = make(fetcher, k).reconcile(invalid(), [deployment(0)])
    [status_call] = k.of("status")
    cond = ready(status_call[3])
    assert (cond["status"], cond["reason"]) == ("False", "InvalidSpec")
    assert cond["message"] == "field 'spec.limits.0.amountUSD': Input should be greater than 0"
    assert cond["observedGeneration"] == 1 and status_call[3]["observedGeneration"] == 1
    assert k.of("event") == [("event", "AgentBudget", "budget-0", "Warning", "InvalidSpec")]
    assert k.of("scale_to_zero") == [] and decision.actions == () and fetcher.fetches == 0
    [record] = caplog.records
    assert record.getMessage() == ("AgentBudget shop/budget-0: field 'spec.limits.0.amountUSD': "
                                   "Input should be greater than 0")
    assert record.exc_info is None  # one line, no traceback


def test_the_event_is_posted_once_per_problem() -> None:
    """Later cycles write nothing and post nothing; an edit still invalid is said again; a fix makes it Ready."""
    k = FakeKube()
    rt = make(CountingFetcher(), k)
    rt.reconcile(invalid(), [deployment(0)])
    rt.reconcile(invalid(), [deployment(0)])
    assert len(k.of("status")) == 1 and len(k.of("event")) == 1
    rt.reconcile(invalid(generation=2, amount=-5), [deployment(0)])
    assert len(k.of("event")) == 2 and ready(rt.previous_status(invalid()))["observedGeneration"] == 2
    fixed = invalid(generation=3, amount=1)
    rt.reconcile(fixed, [deployment(0)])
    assert ready(rt.previous_status(fixed))["status"] == "True"


def test_a_model_validator_problem_names_the_spec() -> None:
    """A rule across fields (the kill switch's window has no limit) names spec and says which rule."""
    doc = body(0)
    doc["spec"]["killSwitch"] = {"window": "day"}
    k = FakeKube()
    make(CountingFetcher(), k).reconcile(doc, [deployment(0)])
    message = ready(k.of("status")[0][3])["message"]
    assert message.startswith("field 'spec': ") and "killSwitch.window day has no limit" in message
    assert "\n" not in message


OLD_READY = {"type": "Ready", "status": "True", "reason": "Evaluated", "message": "ok",
             "lastTransitionTime": "2020-01-01T00:00:00Z", "observedGeneration": 1}
OTHER = {"type": "MetricsAvailable", "status": "True", "reason": "MetricsFresh", "message": "m",
         "lastTransitionTime": "2020-01-01T00:00:00Z"}
SAID = {**OLD_READY, "status": "False", "reason": "InvalidSpec", "message": "bad"}


@pytest.mark.parametrize(("previous", "message", "event", "transition"), [
    ({}, "bad", True, timefmt.rfc3339(NOW)),  # never evaluated
    ({"state": "Active", "conditions": [OLD_READY, OTHER]}, "bad", True, timefmt.rfc3339(NOW)),
    ({"conditions": [SAID, OTHER]}, "bad", True, SAID["lastTransitionTime"]),  # said of generation 1
    ({"conditions": [SAID]}, "worse", True, SAID["lastTransitionTime"]),  # a new problem, still not ready
    ({"conditions": [{**SAID, "observedGeneration": 2}]}, "bad", False, SAID["lastTransitionTime"]),
])
def test_invalid_spec_decision(previous: dict[str, Any], message: str, event: bool, transition: str) -> None:
    """The previous status with Ready=False InvalidSpec first; other conditions kept; an event when new."""
    verdict = evaluate.invalid_spec(status.read(previous)[0], message, NOW, 2)
    body = verdict.status.body()
    cond = body["conditions"][0]
    assert (cond["type"], cond["status"], cond["reason"], cond["message"]) == ("Ready", "False", "InvalidSpec",
                                                                                 message)
    assert cond["lastTransitionTime"] == transition
    assert [c["type"] for c in body["conditions"][1:]] == [
        c["type"] for c in previous.get("conditions", []) if c["type"] != "Ready"]
    assert body["observedGeneration"] == 2
    assert body.get("state") == previous.get("state")
    assert [(e.type, e.reason, e.message) for e in verdict.events] == (
        [("Warning", "InvalidSpec", message)] if event else [])
    assert verdict.actions == () and verdict.findings == ()
