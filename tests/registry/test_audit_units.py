"""The audit trail's arithmetic without a server: the champion stack a trail describes, the record's size limit
and chain fields."""

from __future__ import annotations

import pytest

from pbp.registry.audit import MAX_RECORD, Trail, build, digest
from pbp.registry.server import RegistryError, check_model_name, check_version


def _trail(*decisions: tuple[str, str]) -> Trail:
    t = Trail("m")
    for d, v in decisions:
        t.records.append(build(t, {"action": "x", "decision": d, "version": v}))
    return t


def test_promotions_push_rollbacks_pop_and_refusals_change_nothing():
    t = _trail(("promoted", "2"), ("promoted", "1"), ("refused", "3"), ("promoted", "2"))
    assert t.champions() == ["2", "1", "2"]
    t.records.append(build(t, {"decision": "rolled_back", "version": "1"}))
    assert t.champions() == ["2", "1"]  # a second rollback would go to 2, the champion before 1
    assert [r["seq"] for r in t.records] == [1, 2, 3, 4, 5]
    assert all(r["prev_sha256"] == digest(p) for p, r in zip(t.records, t.records[1:], strict=False))


def test_a_record_over_mlflows_param_limit_is_refused_before_anything_moves():
    t = Trail("m")
    rec = build(t, {"decision": "promoted", "version": "1", "reason": "é" * 5000})  # cut to 1,000 characters
    assert len(rec["reason"]) == 1000
    with pytest.raises(RegistryError, match="over MLflow's 6000"):
        build(t, {"decision": "promoted", "version": "1", "split": {"path": "x" * MAX_RECORD}})


def test_names_and_versions_are_checked_before_any_request():
    for bad in ("x'y", "../a", "a b", "m.pbp-lock", ""):
        with pytest.raises((ValueError, RegistryError)):
            check_model_name(bad)
    for bad in ("0", "-1", "1 OR 1=1", "01", "1.5"):
        with pytest.raises(RegistryError):
            check_version(bad)
    assert check_version(" 12 ") == "12"


def test_the_history_table_says_when_it_cut_a_cell():
    """A long promotion reason was cut at 40 characters without a word of where it is whole."""
    short = {"seq": 1, "action": "promote", "decision": "promoted", "reason": "gate passed"}
    assert Trail("m", [short]).table().endswith("1 decision(s) for model m; chain verified")
    long = {**short, "seq": 2, "reason": "the pretrained base adopted by the structure team for its fine-tuning"}
    table = Trail("m", [short, long]).table()
    assert "the pretrained base adopted by the st..." in table
    assert table.endswith("chain verified; cells over 40 characters are cut (...): --json has them whole")
