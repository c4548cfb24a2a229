"""``pbp registry register SOURCE --name NAME``: any pbp model into the MLflow registry as a pyfunc, with lineage.

SOURCE: an MLflow run id (its ``model`` artifact; a campaign's parent run id: its best trial's), ``runs:/ID/path``, ``models:/NAME/V`` or ``models:/NAME@alias``,
a pbp model directory (local or ``s3://``: a fine-tuned ``final_model/``, a ``pbp pretrain`` export, a ``pbp model
import-keras`` output). A run's artifact that already is a pbp pyfunc (``pbp finetune`` logs one) is registered as
it is; anything else is wrapped in a pyfunc (safetensors + JSON, loaded by a loader module: no pickle) logged to a
registration run of the experiment ``pbp-registry``, so the source run is never modified.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pbp.predict.pyfunc_model import EXAMPLE_SEQUENCES
from pbp.registry import lineage
from pbp.registry.server import RegistryError, call, check_model_name, client, error_code, experiment_id
from pbp.scratch import scratch

REGISTRATION_EXPERIMENT = "pbp-registry"
_RUN_ID = re.compile(r"[0-9a-f]{32}")


@dataclass
class Registered:
    name: str
    version: str
    source: str
    tags: dict[str, str]
    campaign: str = ""
    """Set when the source was a campaign's parent run: the campaign whose best trial was registered."""
    same_source: list[str] = field(default_factory=list)
    """Earlier versions of the model registered from the same source (a second registration is usually a slip)."""
    other_kinds: dict[str, list[str]] = field(default_factory=dict)
    """The model's other versions of another kind (:func:`kind_of`), by kind: a name that holds two tasks cannot
    promote between them."""


def kind_of(tags: dict[str, str]) -> str:
    """A version's kind for promotion: its task kind (``pbp.task.kind``), else ``pbp.kind`` (pretrained)."""
    return tags.get("pbp.task.kind") or tags.get("pbp.kind") or ""


def resolve_source(source: str) -> tuple[str, str | None]:
    """-> (a location ``pbp.train.artifacts.local_dir`` reads, the MLflow run id behind it or None)."""
    if _RUN_ID.fullmatch(source):
        return f"runs:/{source}/model", source
    m = re.fullmatch(r"runs:/([0-9a-f]{32})(/.*)?", source)
    if source.startswith("runs:/") and not m:
        raise RegistryError(f"{source!r}: expected runs:/<32-hex run id>/<artifact path>")
    return source, (m.group(1) if m else None)


def campaign_best(run: Any) -> tuple[str, str] | None:
    """A campaign's parent run (its id is what ``pbp tune`` prints) -> (its best trial's model URI, the campaign's
    name); None for any other run."""
    from pbp.train.tracking import BEST_MODEL_TAG

    campaign = run.data.tags.get("pbp.campaign")
    if not campaign or run.data.tags.get("mlflow.parentRunId"):
        return None  # not a campaign's parent run (a trial's run registers its own model)
    best = run.data.tags.get(BEST_MODEL_TAG)
    if not best:
        raise RegistryError(f"run {run.info.run_id} is campaign {campaign!r}'s parent run and has no {BEST_MODEL_TAG} "
                            "tag: the campaign had no completed trial, or has not finished")  # fmt: skip
    return best, campaign


def register(source: str, name: str, *, test: str = "", description: str = "") -> Registered:
    """Register ``source`` (see the module docstring; a campaign's parent run id registers its best trial's model)
    as a new version of ``name``."""
    from pbp.finetune.export import find_model_dir
    from pbp.train.artifacts import local_dir

    name = check_model_name(name)
    c = client()
    campaign = ""
    uri, run_id = resolve_source(source)
    run = call(f"run {run_id}", lambda: c.get_run(run_id)) if run_id else None
    if run is not None and _RUN_ID.fullmatch(source) and (best := campaign_best(run)):
        source, campaign = best
        uri, run_id = resolve_source(source)
        run = call(f"run {run_id}", lambda: c.get_run(run_id))
    root = local_dir(uri, "source")
    model_dir = find_model_dir(root, source)
    tags = lineage.version_tags(model_dir, source, run)
    if test:  # scores on another split replace the run's: metric tags always describe one split
        tags = {k: v for k, v in tags.items() if not k.startswith(("pbp.metric.", "pbp.test."))}
        tags.update(_test_tags(model_dir, test))
    pyfunc_ready = run_id is not None and (root / "MLmodel").is_file()
    model_uri = uri if pyfunc_ready else _log_pyfunc(c, model_dir, name, source)
    _ensure_registered_model(c, name, description)
    mv = call(f"registering {source} as model {name}", lambda: _register_quietly(model_uri, name, tags),
              permission="EDIT on the registered model")  # fmt: skip
    version = str(mv.version)
    others = [v for v in c.search_model_versions(f"name = '{name}'") if str(v.version) != version]
    same = _from_source(others, tags["pbp.source"])
    kinds: dict[str, list[str]] = {}
    for v in sorted(others, key=lambda v: int(v.version)):
        if kind_of(v.tags) and kind_of(v.tags) != kind_of(tags):
            kinds.setdefault(kind_of(v.tags), []).append(str(v.version))
    return Registered(name, version, model_uri, tags, campaign, same, kinds)


def versions_of_source(name: str, source: str, c: Any = None) -> list[str]:
    """The versions of model ``name`` registered from ``source`` (their ``pbp.source`` tag), oldest first; none
    for a model that does not exist yet."""
    name = check_model_name(name)  # checked: safe in the filter
    return _from_source((c or client()).search_model_versions(f"name = '{name}'"), source)


def _from_source(versions: Any, source: str) -> list[str]:
    """The numbers of ``versions`` (MLflow ModelVersions) whose ``pbp.source`` tag is ``source``, oldest first."""
    return sorted((str(mv.version) for mv in versions if mv.tags.get("pbp.source") == source), key=int)


def _register_quietly(model_uri: str, name: str, tags: dict[str, str]) -> Any:
    """``mlflow.register_model`` without its three lines to stderr: "Registered model 'NAME' already exists" (pbp
    has just created it, with its description and permissions), "Waiting up to 300 seconds", "Created version".
    The caller prints the outcome; MLflow's warnings still show."""
    import contextlib
    import io

    import mlflow

    from pbp.console import quiet_logger

    with quiet_logger("mlflow.store.model_registry.abstract_store"), contextlib.redirect_stderr(io.StringIO()):
        return mlflow.register_model(model_uri, name, tags=tags)


def _test_tags(model_dir: Path, test: str) -> dict[str, str]:
    """``--test FILE``: score a fine-tuned model on FILE now; its digest identifies the split."""
    from pbp.finetune.data import load_split
    from pbp.finetune.export import load_finetuned
    from pbp.registry.gate import evaluate

    if not test.startswith("s3://"):  # recorded for re-scoring later, maybe from another directory
        test = str(Path(test).expanduser().resolve())

    if lineage.model_kind(model_dir) != "finetuned":
        raise RegistryError(f"--test {test}: only fine-tuned models have a task to score on a test file")
    model, task, meta = load_finetuned(model_dir)
    label_column = str((meta.get("test_split") or {}).get("label_column", task.label_column))
    _, sha = load_split(test, task.kind, task.classes, task.seq_column, label_column)
    ref = lineage.SplitRef(test, sha, 0, task.seq_column, label_column)
    metrics = {k: v for k, v in evaluate(model, task, ref, meta).items() if not k.endswith("_loss")}
    return {**ref.tags(), **lineage.metric_tags(metrics, ref)}


def _log_pyfunc(c: Any, model_dir: Path, name: str, source: str) -> str:
    """Wrap ``model_dir`` in a pyfunc logged to a new registration run -> its ``runs:/`` URI."""
    with scratch("register") as tmp:  # the pyfunc's copy: gone once logged
        out = Path(tmp) / "model"
        if lineage.model_kind(model_dir) == "finetuned":
            from pbp.finetune.pyfunc import save_pyfunc

            save_pyfunc(model_dir, out, EXAMPLE_SEQUENCES)
        else:
            from pbp.predict.pretrained import save_pyfunc as save_pretrained_pyfunc

            save_pretrained_pyfunc(model_dir, out, EXAMPLE_SEQUENCES)
        exp = experiment_id(c, REGISTRATION_EXPERIMENT)
        run = call("creating the registration run", lambda: c.create_run(
            exp, run_name=f"register-{name}", tags={"pbp.registered_model": name, "pbp.source": source}))  # fmt: skip
        c.log_artifacts(run.info.run_id, str(out), "model")
    c.set_terminated(run.info.run_id)
    return f"runs:/{run.info.run_id}/model"


def _ensure_registered_model(c: Any, name: str, description: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        call(f"creating registered model {name}", lambda: c.create_registered_model(name, description=description),
             permission="create registered models")  # fmt: skip
    except MlflowException as e:
        if error_code(e) != "RESOURCE_ALREADY_EXISTS":
            raise
