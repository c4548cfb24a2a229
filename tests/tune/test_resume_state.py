"""A resumed campaign keeps its ASHA rungs, stop counts and best so far (``pbp.tune.progress.ResumeState``).

Tune rebuilds the scheduler and stopper from ``tuner.pkl`` as the campaign first made them: a chaos run killed a
campaign's driver after a trial was announced as pruned, and the resumed campaign, its rungs empty, ran that trial to
the end and pruned others than the uninterrupted campaign did (2 completed / 4 pruned became 4 / 2, another best)."""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = r"""
import json, sys
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from pbp.tune.progress import CampaignStopper, LiveProgress, ResumeState

storage = sys.argv[1]

def trainable(config):
    for epoch in range(1, 5):
        tune.report({"epoch": epoch, "m": config["x"] * epoch, "finished": int(epoch == 4)})

def rungs(s):
    return [[m, sorted(rec.values())] for b in s._brackets for m, rec in b._rungs]

ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
sched = ASHAScheduler(time_attr="epoch", metric="m", mode="max", max_t=5, grace_period=1, reduction_factor=2)
stopper, progress = CampaignStopper("m", "max", None, 3), LiveProgress("c", "m", "max", 4)
callbacks = [progress, ResumeState(sched, stopper, progress)]
tuner = tune.Tuner(trainable, param_space={"x": tune.grid_search([4, 1, 3, 2])},
                   tune_config=tune.TuneConfig(scheduler=sched, max_concurrent_trials=1),
                   run_config=tune.RunConfig(name="c", storage_path=storage, stop=stopper, callbacks=callbacks,
                                             verbose=0))
tuner.fit()
before = {"rungs": rungs(sched), "stopper": [stopper.best, stopper.since_best], "best": progress.best[0]}
again = tune.Tuner.restore(f"{storage}/c", trainable)
again.fit()  # every trial ended: nothing runs, but Tune restores the campaign's state first
inner = again._local_tuner
s2, st2 = inner._tune_config.scheduler, inner._run_config.stop
p2 = inner._run_config.callbacks[0]
after = {"rungs": rungs(s2), "stopper": [st2.best, st2.since_best], "best": p2.best[0] if p2.best else None}
print("RESULT " + json.dumps({"before": before, "after": after}))
"""


def test_a_restored_campaign_has_the_rungs_stop_counts_and_best_it_was_interrupted_with(tmp_path):
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=300)
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line is not None, res.stdout[-2000:] + res.stderr[-4000:]
    r = json.loads(line[len("RESULT ") :])
    before, after = r["before"], r["after"]
    assert any(values for _, values in before["rungs"])  # ASHA recorded values at its rungs (x=1 was cut at epoch 1)
    assert after == before
    assert before["best"] == 16 and before["stopper"][0] == 16
