"""`fleetwarden demo` before anything starts: its options and the state directory it may use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fleetwarden import cli
from fleetwarden.demo import stack


def _stack(state: Path) -> stack.Stack:
    return stack.Stack(state, keep=False, scrape_interval=5.0, log=lambda message: None)


@pytest.mark.parametrize(("argv", "field"), [
    (["demo", "--speed", "0.5"], "--speed"),
    (["demo", "--speed", "100"], "--speed"),
    (["demo", "--interval", "0.2"], "--interval"),
])
def test_out_of_range_options_are_refused_before_anything_starts(
        argv: list[str], field: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A speed outside 1..30 or an interval under 1 s exits 2 naming the option; nothing is created."""
    state = tmp_path / "state"
    assert cli.main([*argv, "--state-dir", str(state)]) == 2
    assert field in capsys.readouterr().err
    assert not state.exists()


def test_a_directory_that_is_not_a_demos_is_refused(tmp_path: Path) -> None:
    """A non-empty state dir without the demo's marker is never taken over (up() would wipe it)."""
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(stack.DemoError, match="not a demo state directory"):
        _stack(tmp_path).check_state_dir()
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_an_empty_or_missing_directory_and_a_stopped_demo_are_accepted(tmp_path: Path) -> None:
    """A missing or empty dir, or one a finished demo left (marker, nothing running), is fine to use."""
    _stack(tmp_path / "missing").check_state_dir()
    _stack(tmp_path).check_state_dir()
    old = tmp_path / "old"
    old.mkdir()
    (old / stack.MARKER).write_text(json.dumps({"pid": 1}))
    _stack(old).check_state_dir()


def test_the_checkout_holds_what_the_demo_applies() -> None:
    """The demo finds crds/, the three examples and the Prometheus rules in its checkout."""
    root = stack.repo_root()
    assert (root / "crds" / "agentbudgets.yaml").exists()
    for example in ("support-swarm", "lead-generation", "procurement"):
        assert (root / "examples" / example).is_dir()
    assert (root / stack.RULES).exists()


def test_scalar_is_unknown_without_exactly_one_number(tmp_path: Path) -> None:
    """A PromQL answer with no series, several, or NaN (0/0) is None, never 0."""
    st = _stack(tmp_path)
    answers = {
        "none": [],
        "two": [{"value": [0, "1"]}, {"value": [0, "2"]}],
        "nan": [{"value": [0, "NaN"]}],
        "one": [{"value": [0, "0.25"]}],
    }
    st.query = lambda promql: answers[promql]  # type: ignore[method-assign]
    assert [st.scalar(q) for q in ("none", "two", "nan", "one")] == [None, None, None, 0.25]
