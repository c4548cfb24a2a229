"""Rank-0 MLflow tracking: one run per pretraining run, resumed by id, never logging a step twice.

The run id is kept in every checkpoint; a resumed run (after a worker failure or a re-submission with the same
run name) logs to the same MLflow run. Steps that the interrupted attempt already logged (those after its last
checkpoint) are recomputed but not logged again, so no step appears twice and the loss curve continues.
Credentials come from the node's environment or the local stack's state dir, never from params or tags.

Tracking trouble never stops or stalls training: a failed request puts the tracker in outage mode (one warning),
metrics are buffered (up to ``MAX_PENDING``, oldest dropped beyond and counted) and the server is tried again every
``RETRY_S`` seconds, the buffer sent in order once it answers; MLflow's own HTTP retries are kept short
(``configure_mlflow``) so one attempt costs seconds, not minutes. A run that ends badly is marked FAILED (KILLED when
interrupted) when the server can be reached.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pbp.config import dump_yaml, to_dict
from pbp.errors import UserError
from pbp.names import name_key
from pbp.stack.endpoints import apply_mlflow_env, require, resolve

log = logging.getLogger("pbp.tracking")
RUN_NAME_TAG = "pbp.run_name"
MAX_PENDING = 200_000
"""Metrics kept while MLflow is unreachable (a few MB)."""
RETRY_S = 30.0
"""While MLflow is unreachable, the server is tried again this often (other calls do not wait for it)."""
RUN_KEY_TAG = "pbp.run_key"
"""sha256 hex of the run name: the only thing a run lookup puts in an MLflow filter (never the name itself)."""
BEST_MODEL_TAG = "pbp.best_model_uri"
"""On a campaign's parent run: its best trial's model (``runs:/<trial run>/model``); ``pbp registry register
PARENT_RUN_ID`` registers that."""
MODEL_LOGGED_TAG = "pbp.model_logged"
"""Set on a fine-tuning run once its model is logged: a re-run of the finished run has nothing left to do."""


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def find_run(client: Any, exp_id: str, run_name: str) -> str | None:
    """The id of the newest run in ``exp_id`` tagged with exactly ``run_name``, or None.

    The filter holds only the name's hex key, so no name can change the query; the name is then compared in Python.
    """
    found = client.search_runs(
        [exp_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{name_key(run_name)}'", max_results=10,
        order_by=["attributes.start_time DESC"],
    )  # fmt: skip
    return next((r.info.run_id for r in found if r.data.tags.get(RUN_NAME_TAG) == run_name), None)


def mark_unfinished(experiment: str, run_name: str, status: str = "FAILED") -> None:
    """Driver side, after a run raised: its MLflow run, if still RUNNING, gets ``status``. The workers mark it
    themselves (``finish_on_error``), but a worker killed by Ray Train (another rank failed first, a lost node) never
    gets to. Best effort: a tracking problem here is logged, never raised over the run's own error."""
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(configure_mlflow())
        run_id = _lookup(client, experiment, run_name)
        if run_id is not None and client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, status)
    except Exception as e:  # the run's own error is what the user must see
        log.warning("could not mark MLflow run %s %s: %s", run_name, status, e)


def ended_status(e: BaseException) -> str:
    """KILLED when the user stopped the run (Ctrl-C; ``pbp jobs stop``, whose SIGTERM Ray's driver turns into
    ``SystemExit``), else FAILED."""
    return "KILLED" if isinstance(e, KeyboardInterrupt | SystemExit) else "FAILED"


@contextmanager
def marked_if_unfinished(enabled: bool, experiment: str, run_name: str) -> Iterator[None]:
    """Driver side, around a run: if it raises, its MLflow run (when still RUNNING) gets :func:`ended_status`."""
    try:
        yield
    except BaseException as e:
        if enabled:
            mark_unfinished(experiment, run_name, ended_status(e))
        raise


def mark_family_unfinished(parent_run_id: str, status: str) -> None:
    """Driver side, after a campaign raised: its parent run and the child runs still RUNNING get ``status`` (the
    trials' workers are killed with the driver and cannot say so). A resumed campaign marks them RUNNING again.
    Best effort, like :func:`mark_unfinished`."""
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(configure_mlflow())
        exp = client.get_run(parent_run_id).info.experiment_id
        running = f"tags.mlflow.parentRunId = '{parent_run_id}' and attributes.status = 'RUNNING'"  # a hex run id
        for child in client.search_runs([exp], filter_string=running, max_results=10_000):
            client.set_terminated(child.info.run_id, status)
        if client.get_run(parent_run_id).info.status == "RUNNING":
            client.set_terminated(parent_run_id, status)
    except Exception as e:  # the campaign's own error is what the user must see
        log.warning("could not mark campaign run %s %s: %s", parent_run_id, status, e)


def _lookup(client: Any, experiment: str, run_name: str) -> str | None:
    exp = client.get_experiment_by_name(experiment)
    return find_run(client, exp.experiment_id, run_name) if exp is not None else None


def run_id_of(experiment: str, run_name: str) -> str | None:
    """Driver side, after a run finished: its MLflow run id (for the closing lines), or None when the server cannot
    say (a finished run is never failed over a link)."""
    try:
        from mlflow.tracking import MlflowClient

        return _lookup(MlflowClient(configure_mlflow()), experiment, run_name)
    except Exception as e:
        log.warning("could not look up MLflow run %s: %s", run_name, e)
        return None


def configure_mlflow() -> str:
    """Point this process' MLflow client at the resolved tracking server (credentials in its environment).

    -> the tracking URI."""
    import mlflow

    ep = resolve()
    apply_mlflow_env(ep)
    # MLflow retries a failed request 7 times with backoff (about 255 s): a training step must not wait that long.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    uri = require(ep.mlflow_uri, "MLflow tracking URI")
    mlflow.set_tracking_uri(uri)
    return uri


def quiet_mlflow_driver() -> None:
    """For a driver that ends many MLflow runs and copies models (a campaign, the demo): no "View run" / "View
    experiment" lines per run and no progress bar per artifact copy; the driver prints the links that matter.
    A user's own setting of either variable wins."""
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def missing_from_run(run_id: str) -> list[str] | None:
    """Driver side: what an MLflow run lacks of what a pbp run (pretraining or fine-tuning) sends it by its end, in
    words ([] when nothing): a FINISHED status, and its model (``MODEL_LOGGED_TAG``, set once the model's upload
    succeeded; a FINISHED run from before pbp set the tag counts by its model's files, as pretraining exports them).
    One rule for "the MLflow run is complete" (it checks neither the final metrics nor the backlog). None when the
    server cannot say."""
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(configure_mlflow())
        run = client.get_run(run_id)
        finished = run.info.status == "FINISHED"
        logged = run.data.tags.get(MODEL_LOGGED_TAG) == "true" or (finished and _model_files_logged(client, run_id))
    except Exception:  # gone or unreachable: nothing known
        return None
    missing = [] if finished else [f"its status is {run.info.status}, not FINISHED"]
    return missing + ([] if logged else ["its model is not logged"])


def _model_files_logged(client: Any, run_id: str) -> bool:
    """The exported model's weights and config among the run's ``model`` artifacts (what ``log_model_dir`` uploads);
    False where they cannot be listed (the artifact store unreachable from here, say): a re-run then logs the model
    and sets the tag, which settles it."""
    try:
        listed = {a.path for a in client.list_artifacts(run_id, "model")}
    except Exception:
        return False
    return {"model/model.safetensors", "model/config.json"} <= listed


def tracking_gaps(run_id: str | None) -> list[str]:
    """For a driver's closing report: what the run's MLflow run lacks, in words ([] when complete; MLflow not
    answering, or no run recorded, are gaps too)."""
    if not run_id:
        return ["no MLflow run is recorded in its checkpoint"]
    missing = missing_from_run(run_id)
    return ["MLflow does not answer"] if missing is None else missing


def run_link(run_id: str) -> str:
    """The MLflow UI's address of a run (the bare run id if the server cannot be asked)."""
    from mlflow.tracking import MlflowClient

    try:  # configured here: a submitted job's driver had not, and printed the bare id
        uri = configure_mlflow()
        exp = MlflowClient(uri).get_run(run_id).info.experiment_id
    except Exception:  # a link is a convenience: never fail a finished job over it
        return run_id
    return f"{uri.rstrip('/')}/#/experiments/{exp}/runs/{run_id}"


class TrackingUnavailableError(UserError):
    """The tracking server does not answer when a run starts; the message names it and the way out."""


_NO_ANSWER = {"Connection refused": "connection refused", "Failed to establish a new connection": "no connection",
              "timed out": "timed out", "Name or service not known": "unknown host",
              "Temporary failure in name resolution": "unknown host"}  # fmt: skip


def unanswered(error: BaseException, advice: bool = True) -> str | None:
    """For an MLflow client error that is the server not answering (MLflow reports it as an INTERNAL_ERROR with
    urllib3's text), ``MLflow at URI does not answer (why)``, with ``advice`` followed by what to do; None for
    anything else."""
    why = _no_answer_reason(str(getattr(error, "message", "") or error))
    if why is None:
        return None
    import mlflow

    said = f"MLflow at {mlflow.get_tracking_uri()} does not answer ({why})"
    return f"{said}: start it (`pbp stack up` for the local stack) or check MLFLOW_TRACKING_URI" if advice else said


def _no_answer_reason(text: str) -> str | None:
    """The short reason (``connection refused``...) in an HTTP client's error text that says no server answered."""
    return next((short for needle, short in _NO_ANSWER.items() if needle in text), None)


def tracking_unanswered() -> str | None:
    """``MLflow at URI does not answer (why)`` when the resolved MLflow server does not answer ``/health``; None when
    it does (or the store is a file or database, nothing to reach). Asked through MLflow's own HTTP layer, so the
    settings its client honours apply (``MLFLOW_TRACKING_TOKEN``, ``MLFLOW_TRACKING_SERVER_CERT_PATH``,
    ``MLFLOW_TRACKING_INSECURE_TLS``, a client certificate): a bare request ignored them, and refused runs against
    a server behind a private CA or a token-checking gateway that MLflow itself reached."""
    import requests
    from mlflow.exceptions import MlflowException
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    ep = resolve()
    uri = ep.mlflow_uri or ""
    if not uri.startswith(("http://", "https://")):
        return None
    creds = get_default_host_creds(uri)
    if ep.mlflow_username or ep.mlflow_env_withheld:  # the stack's login, or none where the stack's is withheld
        creds.username, creds.password = ep.mlflow_username, ep.mlflow_password
    try:
        r = http_request(creds, "/health", "GET", max_retries=0, timeout=10, raise_on_status=False)
    except (MlflowException, requests.RequestException, OSError) as e:  # MLflow wraps requests' errors (refused,
        # TLS, timeout) in an MlflowException
        text = str(getattr(e, "message", "") or e)
        why = _no_answer_reason(text) or text[:300]
    else:
        if r.status_code == 200:
            return None
        why = f"HTTP {r.status_code}"
    return f"MLflow at {uri} does not answer ({why})"


def check_tracking_server() -> None:
    """On the driver, before any worker starts: the MLflow server answers ``/health`` (a run needs it to find or
    create its MLflow run; once running, outages are buffered by the Tracker)."""
    said = tracking_unanswered()
    if said is not None:
        raise TrackingUnavailableError(f"{said}: start it (`pbp stack up` for the local stack) or run with "
                                       "tracking.enabled=false")  # fmt: skip


class Tracker:
    """One MLflow run per training run (rank 0). ``progress_metric``: the metric logged at every logging step,
    whose history tells a resumed attempt which steps are logged already."""

    def __init__(
        self, experiment: str, run_name: str, run_id: str | None, enabled: bool = True, progress_metric: str = "loss",
        client: Any | None = None, backlog: Sequence[Sequence[Any]] = (),
    ) -> None:  # fmt: skip
        """``backlog``: the metrics an earlier attempt had not delivered when its checkpoint was saved
        (:meth:`backlog`, kept with the checkpoint): sent first, less those the server has by now."""
        self.run_id: str = ""
        self.enabled = enabled
        self.logged_upto = -1
        self.pending: deque[Any] = deque()
        self.dropped = 0
        self.down_since: float | None = None
        self.retry_at = 0.0
        if not enabled:
            return
        if client is None:
            from mlflow.tracking import MlflowClient

            configure_mlflow()
            client = MlflowClient()
        self.client = client
        exp = self.client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(experiment)
        if run_id is None:  # no checkpoint yet: an earlier attempt may have started the run
            run_id = find_run(self.client, exp_id, run_name)
        if not run_id:
            tags = {RUN_NAME_TAG: run_name, RUN_KEY_TAG: name_key(run_name)}
            run = self.client.create_run(exp_id, run_name=run_name, tags=tags)
            run_id = run.info.run_id
            self.new = True
        else:
            self.new = False
            history = self.client.get_metric_history(run_id, progress_metric)
            self.logged_upto = max((m.step for m in history), default=-1)
            self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id
        if backlog:
            self._send_backlog(backlog)

    def backlog(self) -> list[list[Any]]:
        """The metrics not delivered yet, as JSON rows ``[key, value, timestamp ms, step]`` in the order logged."""
        return [[m.key, m.value, m.timestamp, m.step] for m in self.pending]

    def _send_backlog(self, rows: Sequence[Sequence[Any]]) -> None:
        """An earlier attempt's undelivered metrics, before anything this attempt logs; a key's steps the server
        already has (delivered after that checkpoint was saved) are not sent twice."""
        from mlflow.entities import Metric

        have = {k: max((m.step for m in self.client.get_metric_history(self.run_id, k)), default=-1)
                for k in {str(r[0]) for r in rows}}  # fmt: skip
        todo = [Metric(str(k), float(v), int(ts), int(step)) for k, v, ts, step in rows if int(step) > have[str(k)]]
        if todo:
            log.warning("sending %d metrics of run %s that an earlier attempt could not deliver (kept with its "
                        "checkpoint)", len(todo), self.run_id)  # fmt: skip
            self.pending.extend(todo)
            self.flush()

    def log_config(self, cfg: Any, tags: dict[str, str]) -> None:
        """Resolved config (params + YAML artifact) once per run; tags (dataset, git commit) every attempt.

        The run's identity tags (name and key) are the tracker's own, set when the run is created: a caller's tags
        never replace them (a campaign's shared tags once renamed every trial's run, so none could be found)."""
        if not self.enabled:
            return
        for k, v in tags.items():
            if k not in (RUN_NAME_TAG, RUN_KEY_TAG):
                self.client.set_tag(self.run_id, k, v)
        if not self.new:
            return
        params = {k: str(v)[:500] for k, v in _flatten(to_dict(cfg)).items()}
        from mlflow.entities import Param

        items = list(params.items())
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in items[i : i + 100]])
        self.client.log_text(self.run_id, dump_yaml(cfg), "config/resolved.yaml")

    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled or step <= self.logged_upto:
            return
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        for k, v in metrics.items():
            if len(self.pending) >= MAX_PENDING:
                self.pending.popleft()
                self.dropped += 1
            self.pending.append(Metric(k, float(v), ts, step))
        self.flush()

    def flush(self) -> bool:
        """Send the buffered metrics in order, unless the server is known to be down -> all sent?"""
        while self.pending:
            batch = [self.pending[i] for i in range(min(1000, len(self.pending)))]
            if not self.try_send(lambda batch=batch: self.client.log_batch(self.run_id, metrics=batch)):
                return False
            for _ in batch:
                self.pending.popleft()
        return True

    def try_send(self, fn: Any) -> bool:
        """One server request, skipped while in outage mode until the next retry time -> did it succeed?"""
        now = time.monotonic()
        if self.down_since is not None and now < self.retry_at:
            return False
        try:
            fn()
        except Exception as e:  # any failure to reach or use the server: training goes on
            if self.down_since is None:
                # not "unreachable": a server that answers with an error (its artifact store refusing a model's
                # upload, say) is said here too, in the error's own words
                log.warning("MLflow did not take a request (%s: %s); training continues, metrics are buffered (up to "
                            "%d) and sent when it takes them again", type(e).__name__, str(e)[:200], MAX_PENDING)  # fmt: skip
                self.down_since = now
            self.retry_at = time.monotonic() + RETRY_S
            return False
        if self.down_since is not None:
            log.warning("MLflow takes requests again after %.0f s; sending %d buffered metrics%s", now - self.down_since,
                        len(self.pending), f" ({self.dropped} oldest dropped)" if self.dropped else "")  # fmt: skip
            self.down_since = None
        return True

    def log_model_dir(self, local_dir: Path, artifact_path: str = "model") -> bool:
        """The model's files as the run's artifacts, then :meth:`mark_model_logged`. -> both sent?"""
        if not self.enabled:
            return False
        return self.try_send(lambda: self.client.log_artifacts(self.run_id, str(local_dir), artifact_path)) and (
            self.mark_model_logged()
        )

    def mark_model_logged(self) -> bool:
        """``MODEL_LOGGED_TAG`` on the run, once its model's upload succeeded (:func:`missing_from_run` reads it)."""
        return self.try_send(lambda: self.client.set_tag(self.run_id, MODEL_LOGGED_TAG, "true"))

    def finish(self, status: str = "FINISHED") -> None:
        """Send what is buffered (one last try, even in outage mode) and mark the run ``status``."""
        if not (self.enabled and self.run_id):
            return
        self.retry_at = 0.0
        sent = self.flush()
        if sent and self.try_send(lambda: self.client.set_terminated(self.run_id, status=status)):
            return
        log.warning("MLflow did not take the end of run %s: %d metrics not delivered%s, status %s not recorded",
                    self.run_id, len(self.pending), f" ({self.dropped} dropped)" if self.dropped else "", status)  # fmt: skip


@contextmanager
def finish_on_error(tracker: Tracker | None) -> Iterator[None]:
    """A run that ends with an exception is marked FAILED in MLflow (KILLED when interrupted), then re-raised; a
    retried attempt (Ray Train's max_failures) marks it RUNNING again when it resumes."""
    try:
        yield
    except BaseException as e:
        if tracker is not None:
            tracker.finish("KILLED" if isinstance(e, KeyboardInterrupt | SystemExit) else "FAILED")
        raise
