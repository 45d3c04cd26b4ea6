"""What ``audit verify`` says of secure releases (``audit.secure.SecureLog.lines``): one
line per log, however many different reasons releases without figures state."""

from __future__ import annotations

from collections import Counter

from fedscreen.audit.secure import SecureLog


def test_a_coordinator_line_names_the_commonest_reasons_only() -> None:
    log = SecureLog("coordinator", "coordinator", "fedscreen.coordinator/coordinator")
    log.releases = 12
    log.cross_checked["stats-bureau"] = 5
    log.without_figures = Counter(
        {"no aggregator connected": 3, "timeout after 1.5 s": 2, "timeout after 2 s": 1}
    )
    log.without_figures["timeout after 3 s"] = 1
    assert log.lines() == [
        "  12 secure releases (5 cross-checked against stats-bureau's log, "
        "3 without figures: no aggregator connected, 2 without figures: timeout after 1.5 s, "
        "1 without figures: timeout after 2 s, "
        "1 without figures for other reasons (--json lists them))"
    ]
    assert log.to_json()["without_figures"]["timeout after 3 s"] == 1


def test_unchecked_releases_are_a_warning_and_no_secure_release_is_no_line() -> None:
    log = SecureLog("coordinator", "coordinator", "fedscreen.coordinator/coordinator")
    assert log.lines() == []
    log.releases = 2
    log.unchecked["no log of stats-bureau in the bundle"] = 2
    assert log.lines() == [
        "  2 secure releases (none cross-checked)",
        "  WARNING: 2 secure releases not cross-checked: no log of stats-bureau in the bundle",
    ]
