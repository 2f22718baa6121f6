"""The Lease state machine (adapters/lease.py) on a fake clock and an in-memory Lease, the write
guard it drives, and the leader-election flags of `fleetwarden operator`."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from fleetwarden import cli
from fleetwarden.adapters import kube, lease
from fleetwarden.handlers import leader

TIMINGS = lease.LeaseTimings(lease_duration=15.0, renew_deadline=10.0, retry_period=2.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class MemoryLease:
    """One Lease with a resourceVersion, as the API server keeps it; ``fail`` makes calls fail."""

    def __init__(self) -> None:
        self.record: lease.Record | None = None
        self.version = 0
        self.fail = False
        self.writes = 0

    def _check(self) -> None:
        if self.fail:
            raise kube.KubeError("lease: 503 unavailable", 503)

    def get(self) -> tuple[lease.Record, str] | None:
        self._check()
        return None if self.record is None else (self.record, str(self.version))

    def create(self, record: lease.Record) -> str:
        self._check()
        if self.record is not None:
            raise lease.Conflict("exists")
        return self._write(record)

    def update(self, record: lease.Record, resource_version: str) -> str:
        self._check()
        if resource_version != str(self.version):
            raise lease.Conflict("stale resourceVersion")
        return self._write(record)

    def _write(self, record: lease.Record) -> str:
        self.record, self.version, self.writes = record, self.version + 1, self.writes + 1
        return str(self.version)


def candidate(store: MemoryLease, clock: Clock, name: str) -> lease.Elector:
    return lease.Elector(store, name, TIMINGS, clock=clock, wall=clock, sleep=clock.advance)


def test_the_first_candidate_creates_the_lease_and_leads() -> None:
    """No Lease yet: it is created held by us, acquireTime = renewTime, no transition."""
    clock, store = Clock(), MemoryLease()
    a = candidate(store, clock, "a")
    assert a.try_acquire_or_renew() and a.leading()
    assert store.record == lease.Record("a", 15.0, 1000.0, 1000.0, 0)


def test_a_held_lease_is_not_taken_before_it_expires_as_the_candidate_saw_it() -> None:
    """B sees A's record change at t; it may take the Lease only once t + leaseDuration has passed."""
    clock, store = Clock(), MemoryLease()
    a, b = candidate(store, clock, "a"), candidate(store, clock, "b")
    assert a.try_acquire_or_renew()
    clock.advance(1)
    assert not b.try_acquire_or_renew() and not b.leading()  # B first sees A's record at 1001
    clock.advance(14.9)
    assert not b.try_acquire_or_renew()
    assert store.record is not None and store.record.holder == "a"
    clock.advance(0.2)  # 1016.1 > 1001 + 15
    assert b.try_acquire_or_renew() and b.leading()
    assert store.record == lease.Record("b", 15.0, clock.now, clock.now, 1)
    assert b.acquired_at == clock.now


def test_renewal_keeps_acquire_time_and_transitions_and_moves_expiry() -> None:
    """A's renewals change renewTime only; each change restarts B's wait."""
    clock, store = Clock(), MemoryLease()
    a, b = candidate(store, clock, "a"), candidate(store, clock, "b")
    a.try_acquire_or_renew()
    for _ in range(10):  # 20 s of renewals every 2 s, longer than a lease
        clock.advance(2)
        assert a.try_acquire_or_renew()
        assert not b.try_acquire_or_renew()
    assert store.record is not None
    assert (store.record.holder, store.record.acquire_time, store.record.transitions) == ("a", 1000.0, 0)
    assert store.record.renew_time == clock.now


def test_a_leader_that_cannot_renew_stops_acting_at_the_renew_deadline_before_the_lease_expires() -> None:
    """API down: A still leads for renew_deadline after its last successful renewal began, then not;
    B may take over only after lease_duration, so the two never act at once."""
    clock, store = Clock(), MemoryLease()
    a, b = candidate(store, clock, "a"), candidate(store, clock, "b")
    a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()  # b observes the record at 1000
    store.fail = True
    clock.advance(9.9)
    assert a.try_acquire_or_renew() is True  # the attempt failed, but the deadline has not passed
    clock.advance(0.1)
    assert not a.try_acquire_or_renew() and not a.leading()
    store.fail = False
    clock.advance(4.9)  # 1014.9: A stopped 5 s ago, B still waits
    assert not b.try_acquire_or_renew()
    clock.advance(0.2)
    assert b.try_acquire_or_renew()


def test_two_candidates_racing_for_an_expired_lease_one_wins() -> None:
    """Both read the expired record; the second write carries a stale resourceVersion: 409, no lead."""
    clock, store = Clock(), MemoryLease()
    old = lease.Record("gone", 15.0, 900.0, 900.0, 3)
    store.record, store.version = old, 7
    a, b = candidate(store, clock, "a"), candidate(store, clock, "b")
    # both observed the record long ago
    for c in (a, b):
        c._observed, c._observed_at = old, 900.0  # noqa: SLF001 - the state under test
    real_get = store.get
    snapshot = real_get()
    store.get = lambda: snapshot  # type: ignore[method-assign] - both read before either writes
    assert a.try_acquire_or_renew() is True
    assert b.try_acquire_or_renew() is False
    assert store.record is not None and (store.record.holder, store.record.transitions) == ("a", 4)


def test_a_deposed_leader_stops_at_once_when_it_sees_another_holder() -> None:
    """A paused past the lease; B took over; A's next attempt sees B's record and stops leading."""
    clock, store = Clock(), MemoryLease()
    a, b = candidate(store, clock, "a"), candidate(store, clock, "b")
    a.try_acquire_or_renew()
    b.try_acquire_or_renew()
    clock.advance(16)
    assert b.try_acquire_or_renew()
    assert not a.try_acquire_or_renew() and not a.leading()


def test_renew_loop_returns_when_leadership_is_lost() -> None:
    """renew_until_lost renews every retry period and returns False once the deadline passes."""
    clock, store = Clock(), MemoryLease()
    a = candidate(store, clock, "a")
    assert a.acquire()
    writes = store.writes
    calls = {"n": 0}

    def sleep(seconds: float) -> None:
        calls["n"] += 1
        clock.advance(seconds)
        if calls["n"] == 3:
            store.fail = True

    a.sleep = sleep
    assert a.renew_until_lost() is False
    assert store.writes == writes + 3  # renewed at each retry until the API failed
    assert not a.leading()


def test_release_hands_the_lease_over_without_waiting() -> None:
    """A clean stop empties holderIdentity: B takes the Lease at its next attempt."""
    clock, store = Clock(), MemoryLease()
    a, b = candidate(store, clock, "a"), candidate(store, clock, "b")
    a.try_acquire_or_renew()
    b.try_acquire_or_renew()
    a.release()
    assert not a.leading()
    assert b.try_acquire_or_renew()
    assert store.record is not None and store.record.holder == "b"


def test_the_write_guard_refuses_writes_once_not_leading() -> None:
    """The guard lets writes through while leading and raises NotLeading (a KubeError) after."""
    clock, store = Clock(), MemoryLease()
    a = candidate(store, clock, "a")
    a.try_acquire_or_renew()
    guard = leader.guard_for(a)
    guard("PATCH", "/apis/apps/v1/namespaces/x/deployments/bot/scale")
    clock.advance(10)
    with pytest.raises(kube.KubeError, match="does not hold the leader Lease"):
        guard("PATCH", "/apis/apps/v1/namespaces/x/deployments/bot/scale")


def test_guarded_api_client_asks_the_guard_for_writes_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """GuardedApiClient calls WRITE_GUARD for POST/PUT/PATCH/DELETE, never for GET."""
    seen: list[str] = []
    monkeypatch.setattr(kube, "WRITE_GUARD", lambda method, url: seen.append(method))
    monkeypatch.setattr(kube.client.ApiClient, "call_api", lambda self, method, url, *a, **k: method)
    api = kube.GuardedApiClient(kube.client.Configuration())
    for method in ("GET", "PATCH", "POST", "PUT", "DELETE", "get"):
        api.call_api(method, "/x")
    assert seen == ["PATCH", "POST", "PUT", "DELETE"]


def test_record_round_trips_through_the_lease_spec() -> None:
    """Times are written as MicroTime and read back; an empty holder is written as absent."""
    record = lease.Record("a_1", 15.0, 1_700_000_000.25, 1_700_000_002.5, 2)
    spec = record.to_spec()
    assert spec["renewTime"] == "2023-11-14T22:13:22.500000Z" and spec["leaseDurationSeconds"] == 15
    assert lease.Record.from_spec(spec) == record
    assert dataclasses.replace(record, holder="").to_spec()["holderIdentity"] is None


@pytest.mark.parametrize(("argv", "flag"), [
    (["--lease-duration", "nan"], "--lease-duration"),
    (["--lease-duration", "inf"], "--lease-duration"),
    (["--renew-deadline", "0"], "--renew-deadline"),
    (["--retry-period", "-1"], "--retry-period"),
    (["--lease-duration", "10", "--renew-deadline", "10"], "--renew-deadline"),
    (["--renew-deadline", "3", "--retry-period", "2.5"], "--retry-period"),
    (["--lease-name", "Not_A_Name"], "--lease-name"),
])
def test_bad_leader_election_flags_exit_2_naming_the_flag(argv: list[str], flag: str,
                                                          capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """NaN, inf, <= 0, a renew deadline not shorter than the lease: one line naming the flag, exit 2."""
    def never(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the operator must not start")

    monkeypatch.setattr(leader, "elect", never)
    import kopf

    monkeypatch.setattr(kopf, "run", never)
    code = cli.main(["operator", "--leader-elect", "--lease-namespace", "ops", *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert f"field '{flag}'" in err and len(err.strip().splitlines()) == 1, err


def test_lease_namespace_is_required_outside_a_cluster(capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """--leader-elect without --lease-namespace, $POD_NAMESPACE or a pod's namespace: exit 2."""
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    monkeypatch.setattr(leader, "_SA_NAMESPACE", "/nonexistent")
    assert cli.main(["operator", "--leader-elect"]) == 2
    assert "--lease-namespace" in capsys.readouterr().err
