"""The registry workflow on the local stack (SeaweedFS, MLflow with basic-auth): register fine-tuned models with
their lineage, the gate (the better promoted, the worse refused, a forced promotion with its reason), rollback, the
audit trail read back and verified, two promotions racing from two processes, and the read-only user refused by the
server. Models are tiny; their test scores are made different on purpose: the test split's labels are model A's own
predictions, so A scores Spearman 1.0 there and B, another random model, less."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pbp.finetune.export import TaskInfo, save_finetuned
from pbp.model import ProteinBERT
from pbp.model.finetune import FinetuneModel, TaskKind

from ..conftest import REPO, pbp_env
from .conftest import TINY, client_of, ok

pytestmark = pytest.mark.timeout(900)


def _history(pbp, name: str) -> dict:
    res = pbp("registry", "history", name, "--json")
    assert res.returncode in (0, 1), res.stderr[-3000:]
    return json.loads(res.stdout)


def test_register_gate_promote_refuse_force_rollback_and_history(stack_dir, pbp, models):
    a, b, test, _ = models
    name = f"stab-{os.getpid()}"
    out_a = ok(pbp("registry", "register", str(a), "--name", name, "--test", str(test)))
    out_b = ok(pbp("registry", "register", str(b), "--name", name, "--test", str(test)))
    assert f"model {name} version 1" in out_a and f"model {name} version 2" in out_b
    assert "test_spearman" in out_a and "1.0000" in out_a  # A is perfect on this split

    # B ranks the proteins against A's order (Spearman about -0.15): not above a constant's 0, so not even a first
    # champion; the refusal is audited.
    res = pbp("registry", "promote", name, "--version", "2")
    assert res.returncode == 1 and "not above its trivial baseline's 0.0000" in res.stdout, res.stdout + res.stderr
    res = pbp("registry", "promote", name, "--version", "1")
    assert res.returncode == 0 and "first champion" in res.stdout, res.stdout + res.stderr
    res = pbp("registry", "promote", name, "--version", "2")  # worse: refused
    assert res.returncode == 1 and "refused" in res.stdout and "test_spearman" in res.stdout, res.stdout + res.stderr
    res = pbp("registry", "promote", name, "--version", "2", "--force")
    assert res.returncode == 2 and "--reason" in res.stderr
    ok(pbp("registry", "promote", name, "--version", "2", "--force", "--reason", "hotfix for issue 42"))
    out = ok(pbp("registry", "rollback", name))
    assert "from version 2 to 1" in out

    doc = _history(pbp, name)
    assert doc["verified"] and not doc["problems"]
    recs = doc["records"]
    assert [r["seq"] for r in recs] == [1, 2, 3, 4, 5]
    assert [(r["decision"], r["version"]) for r in recs] == [
        ("refused", "2"), ("promoted", "1"), ("refused", "2"), ("promoted", "2"), ("rolled_back", "1")]  # fmt: skip
    assert recs[0]["champion_after"] is None and recs[0]["candidate_value"] < 0
    assert recs[1]["champion_before"] is None and recs[1]["candidate_value"] == pytest.approx(1.0)
    assert recs[2]["champion_after"] == "1" and recs[2]["candidate_value"] < recs[2]["champion_value"]
    assert recs[3]["forced"] and recs[3]["reason"] == "hotfix for issue 42"
    assert all(r["user"] == "admin" for r in recs)
    table = ok(pbp("registry", "history", name))
    assert "chain verified" in table and "hotfix for issue 42" in table
    # `pbp registry list NAME`: newest first, aliases, the test metric beside its baseline, the split's digest
    lines = ok(pbp("registry", "list", name)).splitlines()
    assert lines[0].split() == ["version", "created", "(UTC)", "aliases", "kind", "test", "metric", "baseline",
                                "from", "test", "split"]  # fmt: skip
    v2, v1 = lines[1].split(), lines[2].split()
    assert v2[0] == "2" and v2[3] == "@previous-champion" and v2[5] == "test_spearman" and float(v2[6]) < 0
    assert v1[0] == "1" and v1[3] == "@champion" and v1[5:8] == ["test_spearman", "1.0000", "0.0000"]
    assert lines[-1] == f"2 version(s) of {name}; @champion: version 1"
    listed = [x.split() for x in ok(pbp("registry", "list")).splitlines()]
    assert [name, "2", "1"] == next(row for row in listed if row[0] == name)[:3]
    assert not any(row[0].endswith(".pbp-lock") for row in listed)  # pbp's lock models are not the user's
    # the same for machines (a promotion pipeline reads the champion and the figures)
    doc = json.loads(ok(pbp("registry", "list", name, "--json")))
    assert doc["model"] == name and doc["champion"] == "1" and [v["version"] for v in doc["versions"]] == ["2", "1"]
    v1 = doc["versions"][1]
    assert v1["aliases"] == ["champion"] and v1["metric"] == "test_spearman" and v1["value"] == pytest.approx(1.0)
    assert v1["baseline"] == 0.0 and v1["kind"] == "finetuned" and v1["split"].startswith(test.name)
    models = json.loads(ok(pbp("registry", "list", "--json")))["models"]
    mine = next(m for m in models if m["name"] == name)
    assert (mine["latest"], mine["champion"], mine["task"]) == ("2", "1", "stability (numeric)")

    from mlflow.tracking import MlflowClient

    client = client_of(stack_dir)
    assert client.get_model_version_by_alias(name, "champion").version == "1"
    assert client.get_model_version_by_alias(name, "previous-champion").version == "2"
    tags = client.get_model_version(name, "1").tags
    assert tags["pbp.kind"] == "finetuned" and tags["pbp.task.kind"] == "numeric"
    assert tags["pbp.task.name"] == "stability" and tags["pbp.git_commit"] == "test"
    assert tags["pbp.test.sha256"] and tags["pbp.metric.split"].startswith(tags["pbp.test.sha256"])
    assert isinstance(client, MlflowClient)


def test_unknown_model_version_other_task_and_bad_names_are_refused(pbp, models, tmp_path):
    a, _b, test, _ = models
    name = f"refuse-{os.getpid()}"
    ok(pbp("registry", "register", str(a), "--name", name, "--test", str(test)))
    ok(pbp("registry", "promote", name, "--version", "1"))
    res = pbp("registry", "promote", name, "--version", "7")
    assert res.returncode == 2 and "version 7" in res.stderr, res.stderr
    res = pbp("registry", "promote", f"nope-{os.getpid()}", "--version", "1")
    assert res.returncode == 2 and "not found" in res.stderr, res.stderr
    res = pbp("registry", "history", f"nope-{os.getpid()}")  # before: "0 decision(s) ...; chain verified"
    assert res.returncode == 2 and f"model nope-{os.getpid()}: not found" in res.stderr, res.stdout + res.stderr
    for bad in ("x'y", "../etc", "a b"):
        res = pbp("registry", "promote", bad, "--version", "1")
        assert res.returncode == 2 and "not a valid name" in res.stderr, res.stderr
    res = pbp("registry", "promote", name, "--version", "1 OR 1=1")
    assert res.returncode == 2 and "positive integer" in res.stderr

    import torch

    torch.manual_seed(3)  # a binary-task model of the same name: refused as another task, and the refusal audited
    other = FinetuneModel(ProteinBERT(TINY), TaskInfo(TaskKind.BINARY).spec)
    meta = {"run_name": "unit-bin", "init": "none", "task_name": "stability"}
    save_finetuned(other, TaskInfo(TaskKind.BINARY), tmp_path / "bin", meta)
    bin_test = tmp_path / "bin.csv"
    bin_test.write_text("seq,label\nMKTAYIAKQR,1\nMSVLTPLLLR,0\nMADEEKLPPG,1\n")
    out = ok(pbp("registry", "register", str(tmp_path / "bin"), "--name", name, "--test", str(bin_test)))
    assert f"note: {name} also holds version(s) 1 of kind 'numeric', this one is 'binary'" in out, out
    res = pbp("registry", "promote", name, "--version", "2")
    assert res.returncode == 1 and "another task kind" in res.stdout, res.stdout + res.stderr
    doc = _history(pbp, name)
    assert doc["verified"] and [r["decision"] for r in doc["records"]] == ["promoted", "refused"]

    # B scored on another file (the same rows, reordered: another digest): the gate re-scores it on the champion's.
    _a, b, _t, _ = models
    rows = test.read_text().splitlines()
    other = tmp_path / "reordered.csv"
    other.write_text("\n".join([rows[0], *reversed(rows[1:])]) + "\n")
    ok(pbp("registry", "register", str(b), "--name", name, "--test", str(other)))
    res = pbp("registry", "promote", name, "--version", "3")
    assert res.returncode == 1, res.stdout + res.stderr
    assert f"the candidate re-scored on the champion's test split, {test.name} (sha256 " in res.stdout, res.stdout
    rec = _history(pbp, name)["records"][-1]
    assert rec["candidate_score"] == "recomputed" and rec["split"]["sha256"] != client_of_sha(other)
    assert rec["champion_value"] == pytest.approx(1.0) and rec["candidate_value"] < 1.0
    # The same source registered again: a new version, with a note naming the earlier one.
    out = ok(pbp("registry", "register", str(a), "--name", name, "--test", str(test)))
    assert f"note: {a} was registered before, as version(s) 1 of {name}; version 4 is another copy" in out, out


def test_two_racing_promotions_leave_one_champion_and_both_decisions(stack_dir, pbp, models):
    a, b, test, _ = models
    name = f"race-{os.getpid()}"
    for m in (a, b):
        ok(pbp("registry", "register", str(m), "--name", name, "--test", str(test)))
    env = pbp_env(stack_dir)
    exe = str(Path(sys.executable).with_name("pbp"))
    procs = [subprocess.Popen([exe, "registry", "promote", name, "--version", v, "--force", "--reason", f"race {v}"],
                              env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for v in ("1", "2")]  # fmt: skip
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    doc = _history(pbp, name)
    assert doc["verified"], doc["problems"]
    recs = doc["records"]
    assert sorted(r["version"] for r in recs) == ["1", "2"] and [r["seq"] for r in recs] == [1, 2]
    # Serialised by the lock: the second decision saw the first's champion.
    assert recs[0]["champion_before"] is None and recs[1]["champion_before"] == recs[0]["version"]
    client = client_of(stack_dir)
    assert client.get_model_version_by_alias(name, "champion").version == recs[1]["version"]
    assert client.get_model_version_by_alias(name, "previous-champion").version == recs[0]["version"]
    assert not [m for m in client.search_registered_models() if m.name.endswith(".pbp-lock")]  # locks released


def test_read_only_user_is_refused_by_the_server_naming_the_permission(stack_dir, pbp, models):
    from pbp.stack.state import Secrets

    a, b, test, _ = models
    name = f"ro-{os.getpid()}"
    for m in (a, b):
        ok(pbp("registry", "register", str(m), "--name", name, "--test", str(test)))
    ok(pbp("registry", "promote", name, "--version", "2", "--force", "--reason", "B below its baseline, for the test"))
    s = Secrets.load(stack_dir)
    reader = {"MLFLOW_TRACKING_USERNAME": s.mlflow_reader_user, "MLFLOW_TRACKING_PASSWORD": s.mlflow_reader_password}
    res = pbp("registry", "promote", name, "--version", "1", env_extra=reader)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "lacks permission" in res.stderr and "EDIT" in res.stderr and "reader" in res.stderr, res.stderr
    doc = json.loads(pbp("registry", "history", name, "--json", env_extra=reader).stdout)
    assert [r["version"] for r in doc["records"]] == ["2"]  # the reader can read the trail, not write it
    client = client_of(stack_dir)
    assert client.get_model_version_by_alias(name, "champion").version == "2"
    assert not [m for m in client.search_registered_models() if m.name.endswith(".pbp-lock")]


def test_a_tampered_trail_is_detected_and_blocks_promotion_until_forced(stack_dir, pbp, models):
    """A record cut off the end (its run retagged) and one deleted both show; a plain promotion is refused then,
    a forced rollback still works and is recorded."""
    from pbp.names import name_key
    from pbp.registry.audit import EXPERIMENT, KEY_TAG

    a, b, test, _ = models
    name = f"tamper-{os.getpid()}"
    for m in (a, b):
        ok(pbp("registry", "register", str(m), "--name", name, "--test", str(test)))
    ok(pbp("registry", "promote", name, "--version", "1"))
    ok(pbp("registry", "promote", name, "--version", "2", "--force", "--reason", "test"))
    client = client_of(stack_dir)
    exp = client.get_experiment_by_name(EXPERIMENT).experiment_id
    runs = client.search_runs([exp], filter_string=f"tags.`{KEY_TAG}` = '{name_key(name)}'")
    last = max(runs, key=lambda r: int(r.data.tags["pbp.audit.seq"]))
    client.set_tag(last.info.run_id, KEY_TAG, "0" * 64)  # cut the last record off the trail
    doc = _history(pbp, name)
    assert not doc["verified"] and any("removed or retagged at its end" in p for p in doc["problems"])
    client.set_tag(last.info.run_id, KEY_TAG, name_key(name))
    assert _history(pbp, name)["verified"]

    first = min(runs, key=lambda r: int(r.data.tags["pbp.audit.seq"]))
    client.delete_run(first.info.run_id)
    doc = _history(pbp, name)
    assert not doc["verified"] and any("record 1" in p and "deleted" in p for p in doc["problems"])
    res = pbp("registry", "promote", name, "--version", "1")
    assert res.returncode == 2 and "does not verify" in res.stderr, res.stdout + res.stderr
    assert pbp("registry", "rollback", name).returncode == 2
    out = ok(pbp("registry", "rollback", name, "--force", "--reason", "incident 7: v2 is broken"))
    assert "from version 2 to 1" in out
    assert client.get_model_version_by_alias(name, "champion").version == "1"
    assert pbp("registry", "promote", f"{name}.pbp-lock", "--version", "1").returncode == 2


def client_of_sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_an_alias_moved_without_its_record_is_detected_and_a_forced_promotion_records_it(stack_dir, pbp, models):
    """A chaos run killed MLflow between a promotion's alias move and its audit record: @champion named version 3,
    the trail's last record version 2, and `pbp registry history` still said "chain verified". The same state comes
    from moving the alias outside pbp (any user with EDIT may). It is now a problem of the trail: history fails,
    a plain promotion is refused, and `promote --force --reason` of the live champion records the move."""
    a, b, test, _ = models
    name = f"moved-{os.getpid()}"
    for m in (a, b):
        ok(pbp("registry", "register", str(m), "--name", name, "--test", str(test)))
    ok(pbp("registry", "promote", name, "--version", "1"))
    client = client_of(stack_dir)
    client.set_registered_model_alias(name, "champion", "2")  # what the interrupted promotion left
    doc = _history(pbp, name)
    assert not doc["verified"]
    assert any("@champion is version 2 in the registry, but the trail's last record (1) leaves version 1" in p
               for p in doc["problems"]), doc["problems"]  # fmt: skip
    res = pbp("registry", "promote", name, "--version", "1")
    assert res.returncode == 2 and "does not verify" in res.stderr, res.stdout + res.stderr
    res = pbp("registry", "promote", name, "--version", "2", "--force", "--reason", "record the interrupted move")
    assert res.returncode == 0, res.stdout + res.stderr
    doc = _history(pbp, name)
    assert doc["verified"], doc["problems"]
    last = doc["records"][-1]
    assert (last["champion_before"], last["champion_after"], last["forced"]) == ("1", "2", True)
    assert client.get_model_version_by_alias(name, "previous-champion").version == "1"


def test_a_promotion_waiting_for_a_held_lock_says_who_holds_it(stack_dir, pbp, models, capsys):
    """A lock left by a killed promotion made the next command sit silent for up to 5 minutes."""
    from pbp.registry.lock import HOLDER_TAG, model_lock
    from pbp.registry.server import RegistryError

    a, _, test, _ = models
    name = f"held-{os.getpid()}"
    ok(pbp("registry", "register", str(a), "--name", name, "--test", str(test)))
    client = client_of(stack_dir)
    holder = {"user": "alice", "os_user": "alice", "host": "build-7", "token": "t" * 32}
    client.create_registered_model(f"{name}.pbp-lock", tags={HOLDER_TAG: json.dumps(holder)})
    capsys.readouterr()
    with (pytest.raises(RegistryError, match="waited 1 s for its promotion lock, held by MLflow user alice"),
          model_lock(client, name, wait_s=1.0)):  # fmt: skip
        pass
    err = capsys.readouterr().err
    assert err.count("waiting for its promotion lock, held by MLflow user alice (alice on build-7)") == 1, err
    assert "t" * 32 not in err
    client.delete_registered_model(f"{name}.pbp-lock")


def test_a_lock_whose_holder_on_this_machine_died_is_broken_at_once(stack_dir, pbp, models, monkeypatch):
    """A chaos run killed a promotion mid-decision: the next one waited out its 600 s lease (or gave up at 300 s)."""
    import socket

    from pbp.local_process import machine_key
    from pbp.registry import lock as lock_module
    from pbp.registry.lock import HOLDER_TAG, model_lock
    from pbp.registry.server import RegistryError

    monkeypatch.setattr(lock_module, "DEAD_HOLDER_S", 0.0)  # (30 s by default: a holder still taking it is younger)

    a, _, test, _ = models
    name = f"dead-{os.getpid()}"
    ok(pbp("registry", "register", str(a), "--name", name, "--test", str(test)))
    client = client_of(stack_dir)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    holder = {"user": "admin", "os_user": "root", "host": socket.gethostname(), "pid": gone.pid,
              "machine": machine_key(), "token": "x" * 32}  # fmt: skip
    client.create_registered_model(f"{name}.pbp-lock", tags={HOLDER_TAG: json.dumps(holder)})
    with model_lock(client, name, wait_s=5.0) as lock:  # taken, not waited for
        assert lock.held() is not None
    # Still waited for: a live holder, and a holder of another machine with this host name (a container sharing the
    # host's network: its pids are not ours to judge).
    for other in ({**holder, "pid": os.getpid()}, {**holder, "machine": "0" * 8}):
        client.create_registered_model(f"{name}.pbp-lock", tags={HOLDER_TAG: json.dumps(other)})
        with pytest.raises(RegistryError, match="waited 1 s for its promotion lock"), \
                model_lock(client, name, wait_s=1.0):  # fmt: skip
            pass
        client.delete_registered_model(f"{name}.pbp-lock")
