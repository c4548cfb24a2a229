"""Pretraining pieces that need no cluster: config checks, the DeepSpeed JSON, optimizers, the lr schedule and the
non-finite loss guard."""

import math
import os

import pytest
import torch

from pbp.config import ConfigError, load_config
from pbp.train.config import OptimConfig, PretrainConfig
from pbp.train.deepspeed_config import deepspeed_config
from pbp.train.optim import Lamb, LRSchedule, build_optimizer

from ..conftest import REPO


def test_base_config_is_the_paper_recipe():
    cfg = load_config(PretrainConfig, REPO / "configs/pretrain/base.yaml")
    assert cfg.model.n_annotations == 8943 and cfg.model.n_blocks == 6
    assert cfg.data.buckets == [[128, 128], [512, 64], [1024, 32]]
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.schedule) == ("lamb", 2e-4, "plateau")
    assert cfg.corruption.p_token_noise == 0.05 and cfg.corruption.p_no_annotation_input == 0.5
    assert cfg.scaling.use_gpu


def test_lamb_with_zero_is_refused_naming_the_fix():
    with pytest.raises(ConfigError, match="lamb needs deepspeed.zero_stage=0"):
        load_config(PretrainConfig, REPO / "configs/pretrain/base.yaml", ["deepspeed.zero_stage=2"])


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_deepspeed_json_is_generated_from_the_config(stage):
    cfg = load_config(PretrainConfig, REPO / f"configs/pretrain/zero{stage}.yaml")
    ds = deepspeed_config(cfg, world_size=2, device_type="cpu")
    assert ds["zero_optimization"]["stage"] == stage
    assert ds["train_micro_batch_size_per_gpu"] == 16 and ds["train_batch_size"] == 32
    assert ds["gradient_clipping"] == cfg.optim.grad_clip and ds["bf16"] == {"enabled": False}


def test_lr_schedules():
    warm = LRSchedule(OptimConfig(lr=1.0, warmup_steps=10, schedule="constant"), 100)
    assert warm.lr(0) == pytest.approx(0.1) and warm.lr(9) == 1.0 and warm.lr(50) == 1.0
    cos = LRSchedule(OptimConfig(lr=1.0, warmup_steps=0, schedule="cosine", min_lr=0.0), 100)
    assert cos.lr(0) == 1.0 and cos.lr(50) == pytest.approx(0.5) and cos.lr(100) == pytest.approx(0.0)
    plat = LRSchedule(OptimConfig(lr=1.0, warmup_steps=0, schedule="plateau", plateau_patience=5), 100)
    for _ in range(3):
        plat.observe(1.0)
    for _ in range(10):
        plat.observe(2.0)  # no improvement
    assert plat.lr(50) == pytest.approx(0.25)
    restored = LRSchedule(plat.cfg, 100)
    restored.load_state_dict(plat.state_dict())
    assert restored.lr(50) == plat.lr(50)
    plat.observe(math.nan)  # ignored


def test_lamb_trains_and_uses_a_per_tensor_trust_ratio():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(20, 20))
    opt = Lamb([w], lr=0.05)
    x = torch.randn(64, 20)
    y = x @ torch.randn(20, 20)
    losses = []
    for _ in range(100):
        opt.zero_grad()
        loss = ((x @ w - y) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert isinstance(build_optimizer([w], OptimConfig(name="adamw")), torch.optim.AdamW)


def test_evaluate_reports_losses_baselines_and_auc(tmp_path, capsys):
    from pbp.data.shards import BuildConfig, Inputs, build
    from pbp.data.synth import SynthConfig, write_corpus
    from pbp.model import ModelConfig, ProteinBERT
    from pbp.train.evaluate import evaluate, load_model

    fasta, table = write_corpus(tmp_path / "s", SynthConfig(n_proteins=400, seed=3))
    manifest = build(
        str(tmp_path / "ds"), Inputs(fasta, table), BuildConfig(min_go_records=5, valid_fraction=0.2)
    ).manifest
    cfg = load_config(
        ModelConfig, REPO / "configs/model/tiny.yaml", [f"n_annotations={len(manifest['go_vocabulary'])}"]
    )
    ProteinBERT(cfg).save_pretrained(tmp_path / "m")
    res = evaluate(load_model(str(tmp_path / "m")), str(tmp_path / "ds"), "valid", seq_len=256)
    assert res["proteins"] == manifest["splits"]["valid"]["samples"]
    assert 2.7 < res["token_loss_baseline"] < 3.1  # entropy of a protein-like residue composition
    assert res["token_loss"] > res["token_loss_baseline"] * 0.5  # an untrained model does not beat it by much
    assert 0.0 <= res["annotation_auc_micro"] <= 1.0 and res["annotation_loss_baseline"] > 0
    assert 0.5 < res["annotation_auc_micro_baseline"] <= 1.0  # synthetic terms differ in frequency
    assert 0.0 <= res["annotation_auc_macro"] <= 1.0 and res["annotation_auc_macro_baseline"] == 0.5
    with pytest.raises(ValueError, match="predicts 3 annotations"):
        evaluate(ProteinBERT(load_config(ModelConfig, REPO / "configs/model/tiny.yaml", ["n_annotations=3"])),
                 str(tmp_path / "ds"))  # fmt: skip
    from pbp.cli.main import main

    assert main(["evaluate", "--model", str(tmp_path / "m"), "--data", str(tmp_path / "ds"), "--seq-len", "256"]) == 0
    n = manifest["splits"]["valid"]["samples"]
    assert capsys.readouterr().out.startswith(f"{tmp_path / 'ds'} split valid: {n} proteins\n")  # what was scored


def test_non_finite_steps_are_counted_and_too_many_in_a_row_stop_the_run():
    from pbp.train.loop import NonFiniteLossError, NonFiniteSteps

    guard = NonFiniteSteps("r", limit=3)
    for step, finite in enumerate([True, False, False, True, False, False]):
        guard.record(finite, step)
    assert (guard.total, guard.in_a_row) == (4, 2)  # a finite step resets the run of skips, not the total
    with pytest.raises(NonFiniteLossError, match=r"r: 3 steps in a row with a non-finite loss \(last at step 6\)"):
        guard.record(False, 6)


def test_the_trainer_tells_ray_trains_controller_how_often_to_collect_reports(tmp_path, monkeypatch):
    """Ray Train's controller collects a worker's reports every 2 s by default and each checkpoint report waits for
    the previous one to be collected: short epochs waited up to 2 s each. The trainer passes the configured poll on
    (Ray Train hands RAY_TRAIN_* variables of the constructing process to its controller); a bad value fails early."""
    from pbp.train.config import ScalingConfig
    from pbp.train.launch import POLL_INTERVAL_ENV, torch_trainer

    monkeypatch.delenv(POLL_INTERVAL_ENV, raising=False)
    torch_trainer(lambda _: None, {}, run_name="poll", storage_path=str(tmp_path),
                  scaling=ScalingConfig(num_workers=1, report_poll_s=0.5))  # fmt: skip
    assert os.environ[POLL_INTERVAL_ENV] == "0.5"
    with pytest.raises(ConfigError, match=r"scaling\.report_poll_s must be .* got 0"):
        ScalingConfig(report_poll_s=0)


def test_a_cluster_too_small_for_the_workers_is_said_before_waiting():
    from pbp.train.config import ScalingConfig
    from pbp.train.launch import capacity_note

    head, one, two = {"Resources": {}}, {"Resources": {"CPU": 1.0}}, {"Resources": {"CPU": 2.0, "GPU": 1.0}}
    assert capacity_note([head, one, one], ScalingConfig(num_workers=2)) is None
    assert capacity_note([head, two], ScalingConfig(num_workers=2)) is None  # two 1-CPU workers on one node
    note = capacity_note([head, one], ScalingConfig(num_workers=2, resource_wait_s=30))
    assert note and "2 node(s) with 1 CPU: room for 1 of 2 worker(s) x 1 CPU" in note, note
    assert "scaling.resource_wait_s=30s" in note and "pbp stack up --workers N" in note
    # A worker needs all its CPUs on one node: three 1-CPU nodes hold no 2-CPU worker.
    note = capacity_note([one, one, one], ScalingConfig(num_workers=1, cpus_per_worker=2))
    assert note and "room for 0 of 1 worker(s) x 2 CPU" in note
    # GPU workers count the GPUs too.
    note = capacity_note([two, one], ScalingConfig(num_workers=2, use_gpu=True))
    assert note and "3 CPU and 1 GPU: room for 1 of 2 worker(s) x 1 CPU + 1 GPU" in note


def test_a_run_waits_for_room_longer_on_a_cluster_that_may_be_starting_nodes(monkeypatch):
    """The default wait was 300 s everywhere: infra/'s clusters start with no GPU node, and an autoscaled GPU node
    (boot, image or packages) takes longer, so the first GPU run on them failed. 300 s stays on the local stack
    (nothing joins there but by `pbp stack up`); other clusters get 30 minutes; a set value is kept."""
    from pbp.train import launch
    from pbp.train.config import ScalingConfig

    monkeypatch.setattr(launch, "on_local_stack", lambda: False)
    assert launch.wait_budget(ScalingConfig()) == 1800 and launch.resource_wait(1800) == (180, 10)
    note = launch.capacity_note([{"Resources": {"CPU": 1.0}}], ScalingConfig(num_workers=2))
    assert note and "scaling.resource_wait_s=1800s" in note
    monkeypatch.setattr(launch, "on_local_stack", lambda: True)
    assert launch.wait_budget(ScalingConfig()) == 300
    assert launch.wait_budget(ScalingConfig(resource_wait_s=20)) == 20
    with pytest.raises(ConfigError, match="scaling.resource_wait_s"):
        load_config(PretrainConfig, REPO / "configs/pretrain/tiny.yaml", ["scaling.resource_wait_s=0"])


def test_on_the_local_stack_a_run_its_nodes_cannot_hold_fails_at_once_naming_the_fix(monkeypatch):
    """The local stack has no autoscaler: waiting scaling.resource_wait_s for nodes to join would wait for nothing.
    A GPU run on nodes without GPUs names use_gpu, not more nodes; elsewhere (an autoscaler) nothing is raised."""
    from pbp.train import launch
    from pbp.train.config import ScalingConfig

    head, one = {"Resources": {}}, {"Resources": {"CPU": 1.0}}
    monkeypatch.setattr(launch, "on_local_stack", lambda: True)
    launch.require_room([head, one, one], ScalingConfig(num_workers=2))  # room: nothing said
    with pytest.raises(
        launch.ClusterCapacityError,
        match=r"room for 2 of 4 worker\(s\) x 1 CPU, and it has no "
        r"autoscaler: add worker nodes \(`pbp stack up --workers N` .*lower scaling\.num_workers",
    ):
        launch.require_room([head, one, one], ScalingConfig(num_workers=4))
    with pytest.raises(launch.ClusterCapacityError, match=r"its nodes have no GPU: run on CPUs \(use_gpu false\)"):
        launch.require_room([head, one, one], ScalingConfig(num_workers=1, use_gpu=True))
    monkeypatch.setattr(launch, "on_local_stack", lambda: False)
    launch.require_room([head, one], ScalingConfig(num_workers=4))  # a cluster that may grow: the run waits


def test_a_campaign_says_when_the_cluster_holds_fewer_trials_at_once_than_it_asks_for():
    from pbp.train.config import ScalingConfig
    from pbp.train.launch import concurrency_note

    head, one, two = {"Resources": {}}, {"Resources": {"CPU": 1.0}}, {"Resources": {"CPU": 2.0}}
    trial = ScalingConfig(num_workers=1)
    assert concurrency_note([head, one, one], trial, 2) is None  # the local stack: two 1-CPU trials at once
    note = concurrency_note([head, one, one], trial, 4)
    assert note == ("the Ray cluster has 3 node(s) with 2 CPU: room for 2 of max_concurrent_trials=4 trials of 1 "
                    "worker(s) x 1 CPU; the others start as slots free up (or as nodes join)")  # fmt: skip
    note = concurrency_note([head, two, one], ScalingConfig(num_workers=2), 3)  # 3 worker slots: 1 trial of 2
    assert note and "room for 1 of max_concurrent_trials=3 trials of 2 worker(s)" in note
    note = concurrency_note([head, one], ScalingConfig(num_workers=2, resource_wait_s=30), 2)  # not one trial
    assert note and "room for 1 of 2 worker(s) x 1 CPU. Waiting up to slot_wait_s=30s" in note  # a trial's setting
    assert "or lower trial_workers / cpus_per_trial_worker" in note and "scaling." not in note, note


def test_a_trial_that_found_no_room_names_the_campaigns_keys_not_its_fine_tunings(monkeypatch, capsys):
    """A trial's fine-tuning waits the campaign's slot_wait_s, sized by trial_workers and cpus_per_trial_worker: its
    error named scaling.resource_wait_s and scaling.num_workers, keys a campaign's user does not set."""
    from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError
    from ray.train.v2.api.exceptions import ControllerError

    from pbp.train import launch
    from pbp.train.config import ScalingConfig

    monkeypatch.setattr(launch, "lost_nodes", lambda: [])
    timed_out = ControllerError(WorkerGroupStartupTimeoutError(num_workers=2))
    scaling = ScalingConfig(num_workers=2, resource_wait_s=600)
    run = launch.capacity_error(timed_out, scaling)
    assert run and "for scaling.resource_wait_s=600s" in str(run) and "lower scaling.num_workers" in str(run)
    trial = launch.capacity_error(timed_out, scaling, launch.TRIAL_KEYS)
    assert trial and "for slot_wait_s=600s" in str(trial), trial
    assert "lower trial_workers / cpus_per_trial_worker" in str(trial) and "scaling." not in str(trial)
    assert "then `pbp tune --resume NAME` runs the campaign's failed trials again" in str(
        trial
    )  # not "the same command"
    assert "then run the same command again" in str(run)

    class Trainer:  # a trial's, whose workers found no room: fit() passes the keys to its note and its error
        def fit(self):
            raise timed_out

    monkeypatch.setattr(launch, "alive_nodes", lambda: [{"Resources": {"CPU": 1.0}}])
    with pytest.raises(launch.ClusterCapacityError, match=r"for slot_wait_s=600s"):
        launch.fit(Trainer(), scaling, keys=launch.TRIAL_KEYS)
    note = capsys.readouterr().out
    assert "Waiting up to slot_wait_s=600s" in note and "or lower trial_workers / cpus_per_trial_worker" in note, note
    assert launch.capacity_error(RuntimeError("other"), scaling) is None


def test_a_run_whose_workers_failed_every_try_says_each_ranks_cause_in_one_message():
    """Before: the driver's and Ray's tracebacks of WorkerGroupError, about 60 lines, after the workers' own."""
    from ray.train import WorkerGroupError

    from pbp.train.config import ScalingConfig
    from pbp.train.launch import failed_run_error

    died = RuntimeError(
        "A worker health check failed.\nWorker info: Worker(...)\nThe actor died unexpectedly before finishing this "
        "task.\nThe actor is dead because its worker process has died. Worker exit type: SYSTEM_ERROR Worker exit "
        "detail: Worker unexpectedly exits with a connection error code 2. End of file. Some common causes include: "
        "(1) the process was killed by the OOM killer due to high memory usage, (2) ray stop --force was called"
    )
    bad = ValueError("size mismatch for head.weight\n\tmore detail")
    e = WorkerGroupError("snippet", {1: bad, 0: bad, 2: died})
    err = failed_run_error(e, ScalingConfig(max_failures=2), "ft-x")
    assert err is not None and str(err) == (
        "run ft-x failed on 3 tries (scaling.max_failures=2); ranks 0, 1: ValueError: size mismatch for head.weight; "
        "rank 2: its process died (Worker unexpectedly exits with a connection error code 2. End of file. Usually "
        "the OOM killer, a signal or a crash in native code). Its newest complete checkpoint is kept: once the cause "
        "is fixed, the same command continues from it (each worker's traceback is above)"
    )
    assert "failed on 1 try (scaling.max_failures=0)" in str(failed_run_error(e, ScalingConfig(max_failures=0), "r"))
    assert failed_run_error(e, ScalingConfig(), "") is None  # a campaign's trial: the campaign reports its error
    assert failed_run_error(ValueError("not Ray Train's"), ScalingConfig(), "ft-x") is None


def test_pretraining_refuses_a_dataset_without_go_terms_naming_it(tmp_path):
    """Before: 'model.n_annotations must be >= 1, got 0', about a field the user never set."""
    from pbp.data.shards import BuildConfig, Inputs, build
    from pbp.train.launch import resolve_config

    fasta = tmp_path / "seqs.fasta"
    fasta.write_text(">P12345\nMKTAYIAKQR\n>Q99999\nMKVLAAGIVG\n")
    build(str(tmp_path / "ds"), Inputs(fasta), BuildConfig(min_go_records=1))
    cfg = load_config(PretrainConfig, REPO / "configs/pretrain/tiny.yaml",
                      [f"data.url={tmp_path / 'ds'}", "tracking.enabled=false"])  # fmt: skip
    with pytest.raises(ValueError, match=r"data\.url=.*ds: the dataset has no GO vocabulary .*--go-table"):
        resolve_config(cfg)


def test_the_driver_drops_rays_chatter_and_prints_every_other_line(capsys, monkeypatch):
    """Through Ray's own printing paths: worker logs, and the raylet's warnings, which Ray prints without its log
    dispatcher (the first filter wrapped the dispatcher, and the raylet's line still printed)."""
    from ray._private import ray_logging
    from ray._private import worker as ray_worker

    from pbp.train.launch import drop_ray_noise

    monkeypatch.setattr(ray_worker, "print_worker_logs", ray_worker.print_worker_logs)  # restored afterwards
    for dedup in (ray_logging.stdout_deduplicator, ray_logging.stderr_deduplicator):
        monkeypatch.setattr(dedup, "recent", {})
    drop_ray_noise()
    drop_ray_noise()  # connecting twice wraps once
    chatter = [
        "[2026-11-27 03:52:03,815 E 14474 14503] core_worker.cc:2465: Actor with class name: 'PreemptionWatcher' "
        "and ID: '7e9c31773e2e033a0452772801000000' has constructor arguments in the object store and "
        "max_restarts > 0. If the arguments in the object store go out of scope or are lost, the actor restart "
        "will fail.",
        "Detected that the Ray Train controller actor (e766e933dd9ca54d1613d11a02000000) is dead. Cleaning up "
        "placement group = [PlacementGroupID(50e478093a2a435dbb1083fc11cc02000000)] created by this run.",
        "WARNING: 8 PYTHON worker processes have been started on node: e5f7 with address: 192.0.2.2, which is 8x "
        "the maximum expected startup concurrency (1). This could be a result of using a large number of actors.",
        "DeepSpeed deepspeed.ops.comm.deepspeed_shm_comm_op built successfully",
    ]
    raylet = {"pid": "raylet", "is_err": False, "lines": [chatter[2]]}
    ray_worker.print_to_stdstream(raylet, ignore_prefix=False)  # as listen_error_messages prints it
    ray_worker.print_to_stdstream({"ip": "a", "pid": 1, "is_err": True, "lines": chatter}, ignore_prefix=False)
    kept = {"ip": "a", "pid": 2, "is_err": False, "lines": [chatter[0], "stage frozen epoch 1/2", "WARNING: x"]}
    ray_worker.print_to_stdstream(kept, ignore_prefix=False)
    out, err = capsys.readouterr()
    assert not any(line[:40] in out + err for line in chatter), out + err
    assert "stage frozen epoch 1/2" in out and "WARNING: x" in out

    # A trial stopped by ASHA: its controller's tracebacks about the trial's report queue, and whatever that process
    # prints after them, are dropped; other processes still print.
    died = ["Error in control loop iteration: The actor died unexpectedly before finishing this task.",
            "\tclass_name: _QueueActor", "\tactor_id: 5d22672f20f15d975a297c9b09000000", "Traceback (most recent call "
            "last):", "ray.exceptions.ActorDiedError: The actor died unexpectedly before finishing this task."]  # fmt: skip
    controller = {"ip": "a", "pid": 17034, "actor_name": "TrainController", "is_err": True}
    ray_worker.print_to_stdstream({**controller, "lines": died}, ignore_prefix=False)
    ray_worker.print_to_stdstream({**controller, "lines": ["[FailurePolicy] RAISE", "  Source: controller"]}, False)
    ray_worker.print_to_stdstream({"ip": "a", "pid": 3, "is_err": True, "lines": ["another trial's line"]}, False)
    out, err = capsys.readouterr()
    assert "another trial's line" in err and "FailurePolicy" not in err and "control loop" not in err, err

    # The other way a stopped trial's controller reports its own end (a submitted campaign, 2026-11-27): its health
    # check finds its worker gone, the worker's owner (the controller itself) exiting as Ray ends the stopped trial.
    gone = ["[FailurePolicy] RETRY", "  Source: worker group", "A worker health check failed.",
            "The actor is dead because its owner has died. Owner Id: e42043b9aa72 Owner Ip address: 192.0.2.2 Owner "
            "worker exit type: INTENDED_SYSTEM_EXIT Worker exit detail: Owner's worker process has crashed."]  # fmt: skip
    other = {"ip": "a", "pid": 5798, "actor_name": "TrainController", "is_err": True}
    ray_worker.print_to_stdstream({**other, "lines": gone}, ignore_prefix=False)
    ray_worker.print_to_stdstream({**other, "lines": ["Attempting to start training worker group of size 1"]}, False)
    crashed = [gone[2], gone[3].replace("INTENDED_SYSTEM_EXIT", "SYSTEM_ERROR")]  # a real crash still prints
    ray_worker.print_to_stdstream({**other, "pid": 5799, "lines": crashed}, ignore_prefix=False)
    out, err = capsys.readouterr()
    assert "RETRY" not in err and "Attempting to start" not in err and "SYSTEM_ERROR" in err, err


def test_a_pruned_trials_workers_are_muted_once_the_campaign_said_it_ended(capsys, monkeypatch):
    """A trial ASHA stopped: its worker went on printing its next epoch's line after the campaign's "ended: pruned",
    and one ended in the middle of a native call printed a fatal-signal stack dump (40 lines, a campaign test's log,
    2026-11-28). Every rank says which run it works for as it starts (a line the driver keeps to itself), so rank 1,
    which prints no progress lines, is muted too; a running trial still prints."""
    from types import SimpleNamespace

    from ray._private import worker as ray_worker

    from pbp.train import launch
    from pbp.train.dist import WORKER_OF_RUN
    from pbp.tune.progress import LiveProgress

    monkeypatch.setattr(ray_worker, "print_worker_logs", ray_worker.print_worker_logs)  # restored afterwards
    monkeypatch.setattr(launch, "_STOPPED_RUNS", set())
    launch.drop_ray_noise()
    pruned, running = {"ip": "a", "pid": 700, "is_err": False}, {"ip": "a", "pid": 701, "is_err": False}
    rank1 = {"ip": "a", "pid": 702, "is_err": True}
    ray_worker.print_to_stdstream({**pruned, "lines": [f"{WORKER_OF_RUN}camp-aaaa"]}, False)
    ray_worker.print_to_stdstream({**rank1, "lines": [f"{WORKER_OF_RUN}camp-aaaa"]}, False)
    ray_worker.print_to_stdstream({**running, "lines": [f"{WORKER_OF_RUN}camp-bbbb"]}, False)
    ray_worker.print_to_stdstream({**pruned, "lines": ["[camp-aaaa] stage frozen epoch 1/2 first"]}, False)
    ray_worker.print_to_stdstream({**running, "lines": ["[camp-bbbb] stage frozen epoch 1/2 second"]}, False)
    trial = SimpleNamespace(trial_id="aaaa", status="RUNNING", last_result={"epoch": 1, "valid_spearman": 0.1})
    LiveProgress("camp", "valid_spearman", "max", 2).on_trial_complete(0, [trial], trial)
    ray_worker.print_to_stdstream({**pruned, "lines": ["[camp-aaaa] stage unfrozen epoch 1/2 late"]}, False)
    dump = ["Fatal Python error: Aborted", "Extension modules: msgpack._cmsgpack, google._upb._message"]
    ray_worker.print_to_stdstream({**pruned, "is_err": True, "lines": dump}, False)
    ray_worker.print_to_stdstream({**rank1, "lines": ["[WARNING] from a library", *dump]}, False)
    ray_worker.print_to_stdstream({**running, "lines": ["[camp-bbbb] stage frozen epoch 2/2 goes on"]}, False)
    out, err = capsys.readouterr()
    assert "trial aaaa ended: pruned at epoch 1" in out and "first" in out and "second" in out, out
    assert "late" not in out and "Fatal" not in err and "Extension modules" not in err, out + err
    assert "goes on" in out and "library" not in err and WORKER_OF_RUN not in out + err


def test_a_campaign_leaves_out_ray_trains_start_lines_and_keeps_its_failure_policy_lines(capsys, monkeypatch):
    """Ray Train's five lines as a trial's workers start were most of a campaign's log (folded into "[repeated Nx
    across cluster]" when trials start together). A campaign's driver drops them; a fine-tuning run's keeps them, and
    Ray Train's other lines (a retry, with its error) print in both."""
    from ray._private import ray_logging
    from ray._private import worker as ray_worker

    from pbp.train import launch

    monkeypatch.setattr(ray_worker, "print_worker_logs", ray_worker.print_worker_logs)  # restored afterwards
    monkeypatch.setitem(launch._quiet, "trial_starts", False)
    launch.drop_ray_noise()
    start = ["Requesting resources: {'CPU': 1.0} * 1",
             "Attempting to start training worker group of size 1 with the following resources: [{'CPU': 1.0}] * 1",
             "Started training worker group of size 1: ", "- (ip=192.0.2.2, pid=17067) world_rank=0, local_rank=0, "
             "node_rank=0", "Setting up process group for: env:// [rank=0, world_size=1]"]  # fmt: skip
    retry = "[FailurePolicy] RETRY Source: worker group Error: a worker died"
    controller = {"ip": "a", "pid": 800, "actor_name": "TrainController", "is_err": False}
    ray_worker.print_to_stdstream({**controller, "lines": [*start, retry]}, False)
    run_out = capsys.readouterr().out
    for dedup in (ray_logging.stdout_deduplicator, ray_logging.stderr_deduplicator):
        monkeypatch.setattr(dedup, "recent", {})  # (the same lines again from another process would be folded)
    launch.quiet_trial_starts()
    ray_worker.print_to_stdstream({**controller, "pid": 801, "lines": [*start, retry]}, False)
    campaign_out = capsys.readouterr().out
    assert all(line.strip() in run_out for line in start) and retry in run_out, run_out
    assert not any(line.strip() in campaign_out for line in start) and retry in campaign_out, campaign_out


def test_concurrent_trials_lines_are_printed_whole_while_library_repeats_stay_folded(capsys, monkeypatch):
    """Ray folds lines that differ only in numbers, from different processes, into one "[repeated Nx across
    cluster]" line printed up to 5 s later: two trials' epoch lines were folded together (one trial's figures never
    shown) and arrived after the campaign's closing lines. pbp's own lines are exempt; a library's line repeated by
    every rank is still folded."""
    from ray._private import ray_logging
    from ray._private import worker as ray_worker

    from pbp.train.launch import keep_pbp_lines_whole

    for dedup in (ray_logging.stdout_deduplicator, ray_logging.stderr_deduplicator):
        monkeypatch.setattr(dedup, "recent", {})
        monkeypatch.setattr(dedup, "allow_re", dedup.allow_re)
    keep_pbp_lines_whole()
    keep_pbp_lines_whole()  # twice: the pattern is added once
    assert ray_logging.stdout_deduplicator.allow_re.pattern.count("feature cache") == 1

    def worker(pid: int, line: str) -> None:
        ray_worker.print_to_stdstream({"ip": "a", "pid": pid, "is_err": False, "lines": [line]}, ignore_prefix=False)

    worker(11, "[camp-a1b2c3d4] stage frozen epoch 1/2 train_loss=1.879 valid_spearman=0.0538")
    worker(12, "[camp-e5f6a7b8] stage frozen epoch 1/2 train_loss=2.81 valid_spearman=0.09895")
    worker(12, "feature cache: train, 200 rows x 384 features, float32 (0 MiB)")
    worker(11, "feature cache: train, 300 rows x 384 features, float32 (0 MiB)")
    worker(11, "UserWarning: something in a library, rank 0")
    worker(12, "UserWarning: something in a library, rank 1")
    out = capsys.readouterr().out
    assert "valid_spearman=0.0538" in out and "valid_spearman=0.09895" in out, out
    assert "200 rows" in out and "300 rows" in out
    assert "rank 0" in out and "rank 1" not in out  # folded by Ray, as before


# -- a re-run of a run name continues that run: its config must be the one the run started with ---------------------


def test_a_rerun_with_another_config_is_refused_naming_each_changed_field_and_its_values():
    from pbp.train.checkpoint import CommitRecord
    from pbp.train.run_identity import RunConfigChangedError, check_same_run, identity

    cfg = load_config(PretrainConfig, None, ["data.url=s3://d/", "model.d_global=64", "max_steps=10"])
    started = identity(cfg, ("seed", "model", "data", "optim"), ("data.url", "data.num_workers"), digest="abc")
    assert started["model.d_global"] == 64 and started["data.buckets.0.1"] == 128 and started["digest"] == "abc"
    assert "data.url" not in started and "max_steps" not in started and "data.num_workers" not in started
    stored = CommitRecord.from_json(CommitRecord(step=5, world_size=1, config=started).to_json(), "x")
    newest = ("s3://runs/pretrain/r1/checkpoint-000000005", stored)

    again = load_config(PretrainConfig, None, ["data.url=s3://elsewhere/", "model.d_global=64", "max_steps=20",
                                               "data.num_workers=2"])  # fmt: skip
    check_same_run(newest, identity(again, ("seed", "model", "data", "optim"), ("data.url", "data.num_workers"),
                                    digest="abc"), "r1")  # fmt: skip  # budget, workers, a moved dataset: continues

    other = load_config(PretrainConfig, None, ["data.url=s3://d/", "model.d_global=32", "optim.lr=1e-3"])
    with pytest.raises(RunConfigChangedError) as e:
        check_same_run(newest, identity(other, ("seed", "model", "data", "optim"), ("data.url",), digest="def"), "r1")
    msg = str(e.value)
    assert "run 'r1' already exists (s3://runs/pretrain/r1, newest checkpoint checkpoint-000000005)" in msg
    assert "model.d_global: 64 -> 32" in msg and "optim.lr: 0.0002 -> 0.001" in msg and "digest: 'abc' -> 'def'" in msg
    assert "data.num_workers: (not set) -> 1" in msg  # a field the start did not record counts as changed
    assert "run_name=r1-2" in msg

    check_same_run(None, started, "r1")  # no checkpoint yet
    check_same_run((newest[0], CommitRecord(step=5, world_size=1)), {"a": 1}, "r1")  # written before identities
