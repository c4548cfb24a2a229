"""``pbp stack up|down|status|env``: the embedded local stack."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from pbp.stack.state import default_state_dir


def register(sub: argparse._SubParsersAction) -> None:
    stack = sub.add_parser("stack", help="the local stack: SeaweedFS (S3), MLflow and a multi-node Ray cluster")
    ssub = stack.add_subparsers(dest="stack_command", metavar="COMMAND", required=True)

    def state_dir_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--state-dir", type=Path, default=None, help="state directory (default: $PBP_STACK_DIR or ~/.pbp/stack)"
        )

    up = ssub.add_parser("up", help="start (or repair) the stack and wait until every service is healthy")
    state_dir_arg(up)
    up.add_argument("--workers", type=int, default=None, help="Ray worker nodes (default 2 at first start)")
    up.add_argument("--worker-cpus", type=int, default=1, help="CPUs each Ray worker node offers")
    up.add_argument("--object-store-mb", type=int, default=512, help="Ray object store per node")
    for key, default in (("data", "pbp-data"), ("runs", "pbp-runs"), ("mlflow", "pbp-mlflow")):
        up.add_argument(f"--bucket-{key}", default=None, help=f"name of the {key} bucket (default {default})")
    up.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for each service")
    up.set_defaults(func=cmd_up)

    down = ssub.add_parser("down", help="stop the processes this stack started (data is kept)")
    state_dir_arg(down)
    down.add_argument("--force", action="store_true",
                      help="stop the stack also while jobs or drivers still run on its Ray cluster: submitted jobs "
                      "are stopped first as `pbp jobs stop` does (their MLflow runs marked KILLED), the rest killed")  # fmt: skip
    down.set_defaults(func=cmd_down)

    st = ssub.add_parser("status", help="each service: running, healthy, ports")
    state_dir_arg(st)
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)

    env = ssub.add_parser("env", help='print export lines for a shell: eval "$(pbp stack env)"')
    state_dir_arg(env)
    env.set_defaults(func=cmd_env)


def _dir(args: argparse.Namespace) -> Path:
    return (args.state_dir or default_state_dir()).expanduser().resolve()


def cmd_up(args: argparse.Namespace) -> int:
    from pbp.stack import manager

    buckets = {k: v for k in ("data", "runs", "mlflow") if (v := getattr(args, f"bucket_{k}"))}
    t0 = time.monotonic()
    print(f"pbp stack up: {_dir(args)}")
    state = manager.up(
        _dir(args),
        workers=args.workers,
        buckets=buckets or None,
        object_store_mb=args.object_store_mb,
        worker_cpus=args.worker_cpus,
        timeout=args.timeout,
    )
    print(f"all services healthy in {time.monotonic() - t0:.1f}s")
    print("\n".join(manager.describe(state)))
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    from pbp.errors import UserError
    from pbp.stack import manager
    from pbp.stack.jobs import head_running, job_line, listed_jobs, stop_submitted

    listed = listed_jobs(_dir(args))
    if listed is None and not args.force and head_running(_dir(args)):  # silent, not empty: jobs may run there
        raise UserError("cannot tell whether jobs run on this stack's Ray cluster: its head runs but its Jobs API "
                        "did not answer within 10 s; pass --force to stop the stack anyway (running jobs would be "
                        "killed, their MLflow runs left RUNNING)")  # fmt: skip
    running = listed or []
    if running and not args.force:  # the stack stopped under a job that then vanished: no word, its run RUNNING
        raise UserError(f"{len(running)} job(s) still running on this stack's Ray cluster, which `pbp stack down` "
                        "would kill with no record:\n  " + "\n  ".join(map(job_line, running)) + "\nstop them first "
                        "(`pbp jobs stop ID` marks a run stopped and says how to resume it), or pass --force")  # fmt: skip
    left = stop_submitted(_dir(args), running) if running else []
    if stopped := [j for j in running if j not in left and j.get("submission_id")]:
        print(f"stopped {len(stopped)} submitted job(s) first, as `pbp jobs stop` does (pbp's drivers mark their "
              "MLflow runs KILLED):\n  " + "\n  ".join(map(job_line, stopped)))  # fmt: skip
    t0 = time.monotonic()
    n = manager.down(_dir(args))
    print(f"stopped {n} service(s) in {time.monotonic() - t0:.1f}s; data kept in {_dir(args)}")
    if left:
        print(f"killed {len(left)} job(s) or driver(s) with it, their MLflow runs left RUNNING:\n  "
              + "\n  ".join(map(job_line, left)))  # fmt: skip
    if running:
        print("the same command resumes a run from its newest checkpoint (`pbp submit tune --resume NAME` a "
              "campaign) once the stack is up again")  # fmt: skip
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from pbp.stack import manager

    state, rows = manager.status(_dir(args))
    if state is None:
        print(f"no stack in {_dir(args)}")
        return 1
    if args.json:
        print(json.dumps([r.__dict__ for r in rows], indent=2))
    else:
        for r in rows:
            ports = " ".join(f"{k}={v}" for k, v in list(r.ports.items())[:3])
            print(f"  {r.name:14} {r.detail:40} pid={r.pid or '-':<8} {ports}")
    return 0 if all(r.healthy for r in rows) else 1


def cmd_env(args: argparse.Namespace) -> int:
    from pbp.stack import manager

    print("\n".join(manager.env_lines(_dir(args))))
    return 0
