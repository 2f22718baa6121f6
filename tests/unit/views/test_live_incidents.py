"""views.live: incidents read from the AgentBudgets' status, linked to the model change before them."""

from __future__ import annotations

import pytest

from fleetwarden.views import live, model

T0 = 1_800_000_000.0
OPENED = "2027-01-15T08:00:00Z"  # T0


def budget(incidents, rollbacks=()):
    return {"metadata": {"name": "support", "namespace": "shop"},
            "status": {"incidents": list(incidents), "model": {"rollbacks": list(rollbacks)}}}


SPIKE = {"id": "inc-1", "kind": "model_update_spike", "agent": "bot", "time": OPENED, "action": "rollback",
         "message": "cost per task 3x", "workflow": "refund", "model": "gpt-4o"}


def test_the_change_prometheus_saw_before_the_incident_is_linked():
    """An incident gets the agent's latest model change at or before it; later ones and other agents don't count."""
    seen = [model.ModelChange("bot", "shop", T0 - 600, "gpt-4o", "gpt-4o-mini"),
            model.ModelChange("bot", "shop", T0 + 600, "o1", "gpt-4o"),
            model.ModelChange("helper", "shop", T0 - 60, "gpt-4o", "x")]
    (row,) = live._incidents_from_status([budget([SPIKE])], T0 - 3600, T0 + 3600, seen)  # noqa: SLF001
    assert row.model_change == seen[0]
    assert (row.id, row.workflow, row.actions) == ("inc-1", "refund", ("rollback",))


def test_an_unseen_change_comes_from_the_incident_and_its_rollback():
    """With no change in Prometheus' window, the incident's model and the model it was rolled back to."""
    rollbacks = [{"from": "gpt-4o", "to": "gpt-4o-mini", "incident": "inc-1", "reason": "spike"}]
    (row,) = live._incidents_from_status([budget([SPIKE], rollbacks)], T0 - 3600, T0 + 3600)  # noqa: SLF001
    assert row.model_change == model.ModelChange("bot", "shop", T0, "gpt-4o", "gpt-4o-mini")
    (row,) = live._incidents_from_status([budget([SPIKE])], T0 - 3600, T0 + 3600)  # noqa: SLF001
    assert row.model_change == model.ModelChange("bot", "shop", T0, "gpt-4o", None)


def test_incidents_without_a_model_and_outside_the_window():
    """A kill with no model and no change seen has none; incidents outside the window are left out."""
    kill = {"id": "inc-2", "kind": "kill_switch", "agent": "bot", "time": OPENED, "action": "kill", "message": "m"}
    (row,) = live._incidents_from_status([budget([kill])], T0 - 60, T0 + 60)  # noqa: SLF001
    assert row.model_change is None
    assert live._incidents_from_status([budget([kill])], T0 + 1, T0 + 60) == []  # noqa: SLF001


@pytest.mark.parametrize(("window", "step", "expected"), [
    (3600, 300, 60),  # a minute
    (3600, 30, 30),  # the trend step when finer
    (14 * 86400, 50400, 121),  # 14 days: within Prometheus' 11,000 points per series
])
def test_the_onset_queries_stay_within_prometheus_point_limit(window, step, expected):
    """Model-change and alert range queries use a minute, but never more than 10,000 points."""
    from fleetwarden.views import live

    assert live.fine_step(0.0, float(window), step) == expected
    assert window / live.fine_step(0.0, float(window), step) <= 11000
