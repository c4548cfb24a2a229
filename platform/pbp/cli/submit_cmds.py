"""``pbp submit`` and ``pbp jobs ...``: Ray jobs on the local stack or a cloud cluster."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser(
        "submit",
        help="submit jobs/JOB.py to the Ray cluster (RAY_ADDRESS, else the local stack)",
        description="Ships the project as the job's working_dir and platform/pbp as a py_module; the Ray token goes "
        "in a header, no secret in the runtime_env. Re-submitting an identical running job reports it instead.",
    )
    s.add_argument("job", help="a job name: the stem of a file in jobs/ (e.g. smoke)")
    s.add_argument("--config", type=Path, default=None, help="the job's config YAML (inside the project)")
    s.add_argument("overrides", nargs="*", help="dotted config overrides, passed to the job")
    s.add_argument("--address", default=None, help="Ray Jobs API URL, e.g. http://127.0.0.1:8265")
    s.add_argument("--wait", action="store_true", help="follow the logs until the job ends; exit 0 only on success")
    s.add_argument("--timeout", type=float, default=None, help="with --wait: give up after this many seconds")
    s.add_argument("--resume", metavar="NAME", default="",
                   help="tune only: continue campaign NAME (stopped or interrupted) from its saved config")  # fmt: skip
    s.add_argument("--warm-start", metavar="NAME", default="",
                   help="tune only: seed the new campaign's search with campaign NAME's evaluated points")  # fmt: skip
    s.set_defaults(func=cmd_submit)

    j = sub.add_parser("jobs", help="list, follow and stop submitted jobs")
    jsub = j.add_subparsers(dest="jobs_command", metavar="COMMAND", required=True)
    for name, help_ in (("list", "the submitted jobs"), ("status", "one job's status"), ("logs", "one job's logs"),
                        ("stop", "stop a job")):  # fmt: skip
        p = jsub.add_parser(name, help=help_)
        if name != "list":
            p.add_argument("id", help="submission id")
        else:
            p.add_argument("--all", action="store_true",
                           help="also the drivers that connected directly (a `pbp` command run against the cluster)")  # fmt: skip
        if name == "logs":
            p.add_argument("--follow", "-f", action="store_true", help="follow until the job ends")
        p.add_argument("--address", default=None, help="Ray Jobs API URL")
        p.set_defaults(func=cmd_jobs)


def cmd_submit(args: argparse.Namespace) -> int:
    from pbp import submit

    sid = submit.submit(args.job, args.config, args.overrides, address=args.address, resume=args.resume,
                        warm_start=args.warm_start)  # fmt: skip
    if not args.wait:
        print(f"follow it with: pbp jobs logs {sid} --follow")
        return 0
    status = submit.wait(sid, address=args.address, timeout=args.timeout)
    print(f"{sid}: {status}")
    return 0 if status == "SUCCEEDED" else 1


def cmd_jobs(args: argparse.Namespace) -> int:
    from pbp import submit

    c = submit.client(args.address)
    if args.jobs_command == "list":
        print(jobs_table(c.list_jobs(), c.get_address(), drivers=args.all))
        return 0
    if args.jobs_command == "status":
        info = submit.job_call(args.id, lambda: c.get_job_info(args.id))
        print(json.dumps({"id": args.id, "status": info.status.name, "message": info.message,
                          "entrypoint": info.entrypoint}, indent=2))  # fmt: skip
        return 0
    if args.jobs_command == "logs":
        if args.follow:
            status = submit.wait(args.id, address=args.address)
            return 0 if status == "SUCCEEDED" else 1
        print(submit.job_call(args.id, lambda: c.get_job_logs(args.id)), end="")
        return 0
    stopped = submit.job_call(args.id, lambda: c.stop_job(args.id))
    print(f"{args.id} on {c.get_address()}: {'stop requested' if stopped else 'was not running'}")
    resume = (submit.job_call(args.id, lambda: c.get_job_info(args.id)).metadata or {}).get(submit.RESUME_KEY)
    if stopped and resume:  # its own log says so too, but under Ray's teardown lines
        print(f"campaign {resume.split()[0]}: `pbp submit tune --resume {resume}` continues it from storage")
    return 0


def jobs_table(jobs: list, where: str, drivers: bool = False) -> str:
    """The cluster's submitted jobs, oldest first: id, status, start (UTC), how long it ran (or has run), entrypoint.

    Ray lists as jobs, too, every driver that connected directly (each ``pbp pretrain|finetune|tune`` run against
    the cluster): they have no submission id and no log to fetch (their output went to their own terminal), so they
    are counted, and listed only with ``drivers``, marked so."""
    import time
    from datetime import UTC, datetime

    from pbp.console import aligned

    direct = [i for i in jobs if not i.submission_id]
    shown = jobs if drivers else [i for i in jobs if i.submission_id]
    if not shown:
        more = f"; {len(direct)} driver(s) connected directly (--all lists them)" if direct else ""
        return f"no submitted jobs on the cluster at {where} (a restarted cluster forgets its jobs){more}"
    rows = []
    for info in sorted(shown, key=lambda i: i.start_time or 0):
        start, end = info.start_time, info.end_time or (time.time() * 1000 if info.start_time else None)
        rows.append([info.submission_id or f"{info.job_id} (direct)", info.status.name,
                     datetime.fromtimestamp(start / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S") if start else "-",
                     f"{(end - start) / 1000:.0f} s" if start and end else "-", info.entrypoint])  # fmt: skip
    lines = aligned(["id", "status", "started (UTC)", "ran", "entrypoint"], rows, right=(3,))
    n = len(rows) - (len(direct) if drivers else 0)
    if drivers:
        more = f" and {len(direct)} driver(s) connected directly (marked: no log to fetch)" if direct else ""
        return "\n".join([*lines, f"{n} submitted job(s){more} on {where}; `pbp jobs logs ID` shows a job's output"])
    more = f"; {len(direct)} driver(s) connected directly (--all lists them)" if direct else ""
    return "\n".join([*lines, f"{n} submitted job(s) on {where}; `pbp jobs logs ID` shows one's output{more}"])
