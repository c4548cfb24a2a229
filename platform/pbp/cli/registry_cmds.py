"""``pbp registry ...``: register models, promote them through the gate, roll back, read the audit trail."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    reg = sub.add_parser("registry", help="the MLflow model registry: register, list, promote, rollback, history",
                         description="See docs/registry.md. Needs the MLflow server (the local stack, or "
                         "MLFLOW_TRACKING_URI + credentials).")  # fmt: skip
    rsub = reg.add_subparsers(dest="registry_command", metavar="COMMAND", required=True)

    r = rsub.add_parser("register", help="register a model (run id, runs:/ or models:/ URI, pbp model dir or s3://)")
    r.add_argument("source", help="an MLflow run id, runs:/ID/model, models:/NAME/V, a model directory or s3:// URL")
    r.add_argument("--name", required=True, help="registered model name")
    r.add_argument("--test", default="", help="score a fine-tuned model on this test CSV now (local or s3://)")
    r.add_argument("--description", default="")
    r.set_defaults(func=_mlflow_errors(cmd_register))

    p = rsub.add_parser("promote", help="move @champion to a version that passes the gate (audited)")
    p.add_argument("name")
    p.add_argument("--version", required=True)
    p.add_argument("--tolerance", type=float, default=0.0,
                   help="promote when the candidate's test metric >= the champion's minus this (default 0)")  # fmt: skip
    p.add_argument("--force", action="store_true", help="skip the gate (needs --reason; recorded)")
    p.add_argument("--reason", default="", help="why: recorded in the audit trail")
    p.set_defaults(func=_mlflow_errors(cmd_promote))

    b = rsub.add_parser("rollback", help="move @champion back to the champion before it (audited)")
    b.add_argument("name")
    b.add_argument("--reason", default="")
    b.add_argument("--force", action="store_true", help="even if the audit trail does not verify (needs --reason)")
    b.set_defaults(func=_mlflow_errors(cmd_rollback))

    ls = rsub.add_parser("list", help="registered models; with NAME its versions: aliases, origin, test metric "
                         "beside its trivial baseline, test split")  # fmt: skip
    ls.add_argument("name", nargs="?", default="")
    ls.add_argument("--json", action="store_true", help="as JSON (a missing figure is null)")
    ls.set_defaults(func=_mlflow_errors(cmd_list))

    h = rsub.add_parser("history", help="the audit trail of a model: who was champion when, and why")
    h.add_argument("name")
    h.add_argument("--json", action="store_true", help="as JSON (records, problems, verified)")
    h.set_defaults(func=_mlflow_errors(cmd_history))


def _mlflow_errors(fn):
    """Any other refusal of the MLflow server is an error (exit 2) with its message, never exit 1, which means
    'refused by the gate'."""

    def run(args: argparse.Namespace) -> int:
        from mlflow.exceptions import MlflowException

        from pbp.registry.server import RegistryError
        from pbp.train.tracking import unanswered

        try:
            return fn(args)
        except MlflowException as e:
            down = unanswered(e)
            raise RegistryError(down or f"the MLflow server refused a request ({e.error_code}): {e.message}") from None

    return run


def _quiet() -> None:
    """Every decision is an MLflow run of the audit trail: no "View run" link per record (the command prints the
    outcome), no progress bar per model download."""
    from pbp.train.tracking import quiet_mlflow_driver

    quiet_mlflow_driver()


def cmd_register(args: argparse.Namespace) -> int:
    _quiet()
    from pbp.registry.register import kind_of
    from pbp.registry.register import register as do_register

    r = do_register(args.source, args.name, test=args.test, description=args.description)
    metrics = {k[len("pbp.metric.") :]: v for k, v in r.tags.items() if k.startswith("pbp.metric.test_")}
    best = f" (campaign {r.campaign}'s best trial)" if r.campaign else ""
    print(f"registered {r.source}{best} as model {r.name} version {r.version} ({r.tags.get('pbp.kind')}); "
          f"URI models:/{r.name}/{r.version}")  # fmt: skip
    for k, v in sorted(metrics.items()):
        print(f"  {k:28} {float(v):.4f}")
    if r.same_source:
        print(f"note: {r.tags['pbp.source']} was registered before, as version(s) {', '.join(r.same_source)} of "
              f"{r.name}; version {r.version} is another copy")  # fmt: skip
    for kind, versions in r.other_kinds.items():
        print(f"note: {r.name} also holds version(s) {', '.join(versions)} of kind {kind!r}, this one is "
              f"{kind_of(r.tags)!r}: promotion does not compare across kinds, so a model per task (its own "
              "--name) keeps @champion meaningful")  # fmt: skip
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    _quiet()
    from pbp.registry.promote import promote

    out = promote(args.name, args.version, tolerance=args.tolerance, force=args.force, reason=args.reason)
    print(out.message)
    return 0 if out.promoted else 1


def cmd_rollback(args: argparse.Namespace) -> int:
    _quiet()
    from pbp.registry.promote import rollback

    print(rollback(args.name, reason=args.reason, force=args.force).message)
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    from pbp.registry import audit
    from pbp.registry.server import call, check_model_name, client

    c = client()
    trail = audit.read(c, check_model_name(args.name))
    if not trail.records:  # a typo'd name is not a model without decisions (a deleted model keeps its trail)
        call(f"model {args.name}", lambda: c.get_registered_model(args.name))
    if args.json:
        doc = {"model": trail.model, "verified": not trail.problems, "problems": trail.problems,
               "records": trail.records}  # fmt: skip
        print(json.dumps(doc, indent=2))
    else:
        print(trail.table())
    return 0 if not trail.problems else 1


def cmd_list(args: argparse.Namespace) -> int:
    from pbp.registry.listing import listing_json, models_table, versions_table

    if args.json:
        print(json.dumps(listing_json(args.name), indent=2))
    else:
        print(versions_table(args.name) if args.name else models_table())
    return 0
