"""The Alertmanager v2 alerts built from findings, and the non-blocking sender."""

from __future__ import annotations

import pytest

from fleetwarden import errors
from fleetwarden.adapters import alertmanager
from fleetwarden.core import findings, timefmt

T0 = 1_795_000_000.0


def _finding(kind: str = findings.KILL_SWITCH, action: str = findings.KILL, **extra: object) -> findings.Finding:
    return findings.Finding(kind=kind, agent="support-bot", namespace="agents", time=T0, action=action,
                            message="spend passed 150% of the hourly cap", onset=T0 - 120,
                            evidence={"spend_usd": 31.5, "cap_usd": 20}, **extra)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind, action, name, severity", [
    (findings.KILL_SWITCH, findings.KILL, "FleetwardenKillSwitch", "critical"),
    (findings.BUDGET_EXCEEDED, findings.ALERT, "FleetwardenBudgetExceeded", "critical"),
    (findings.MODEL_UPDATE_SPIKE, findings.ROLLBACK, "FleetwardenModelUpdateSpike", "critical"),
    (findings.RUNAWAY_LOOP, findings.ALERT, "FleetwardenRunawayLoop", "warning"),
    (findings.TOOL_CALL_EXPLOSION, findings.THROTTLE, "FleetwardenToolCallExplosion", "warning"),
    (findings.BUDGET_WARNING, findings.ALERT, "FleetwardenBudgetWarning", "warning"),
    (findings.APPROVAL_REQUIRED, findings.DENY, "FleetwardenApprovalRequired", "info"),
])
def test_alertname_and_severity_by_kind(kind: str, action: str, name: str, severity: str) -> None:
    """alertname is Fleetwarden + CamelCase kind; severity follows what the action does to agents."""
    alert = alertmanager.build_alert(_finding(kind, action), "inc-0123456789", budget="support")
    assert alert["labels"]["alertname"] == name
    assert alert["labels"]["severity"] == severity


def test_alert_shape_matches_the_v2_api() -> None:
    """labels, annotations summary/description and startsAt = onset; strings only in labels."""
    f = _finding(tool="crm.search", workflow="triage")
    alert = alertmanager.build_alert(f, findings.incident_id(f), budget="support")
    assert set(alert) == {"labels", "annotations", "startsAt"}
    assert alert["labels"] == {
        "alertname": "FleetwardenKillSwitch", "severity": "critical", "agent": "support-bot",
        "namespace": "agents", "budget": "support", "incident": findings.incident_id(f),
        "kind": "kill_switch", "action": "kill", "tool": "crm.search", "workflow": "triage"}
    assert set(alert["annotations"]) == {"summary", "description"}
    assert '"spend_usd": 31.5' in alert["annotations"]["description"]
    assert alert["startsAt"] == timefmt.rfc3339_ms(T0 - 120)


def test_one_alert_per_incident() -> None:
    """The same incident reported twice in one cycle is one alert."""
    f = _finding()
    alerts = alertmanager.build_alerts([(f, "inc-a"), (f, "inc-a"), (_finding(findings.RUNAWAY_LOOP), "inc-b")])
    assert [a["labels"]["incident"] for a in alerts] == ["inc-a", "inc-b"]


def test_unreachable_alertmanager_is_an_external_error() -> None:
    """send() wraps a connection failure in ExternalError; submit() never raises or blocks."""
    notifier = alertmanager.Notifier("http://127.0.0.1:9", timeout=0.5)  # port 9: nothing listens
    with pytest.raises(errors.ExternalError, match="unreachable"):
        notifier.send([alertmanager.build_alert(_finding(), "inc-x")])
    assert notifier.submit([alertmanager.build_alert(_finding(), "inc-x")]) is True
    assert notifier.flush(timeout=5)
    assert notifier.failed == 1 and notifier.sent == 0
    notifier.close()


def test_bad_url_is_an_input_error() -> None:
    """A URL without http(s) names the flag."""
    with pytest.raises(errors.InputError, match="--alertmanager-url"):
        alertmanager.Notifier("alertmanager:9093")
