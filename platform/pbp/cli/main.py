"""``pbp``: entry point. Each subcommand group lives in its own module and registers itself here."""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Sequence

import pbp
from pbp.cli import (
    bench_cmds,
    data_cmds,
    demo_cmds,
    finetune_cmds,
    infra_cmds,
    model_cmds,
    predict_cmds,
    registry_cmds,
    stack_cmds,
    submit_cmds,
    train_cmds,
)
from pbp.errors import UserError


class CLIError(UserError):
    """An error to show the user without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pbp",
        description="pbp: pretrain, fine-tune, track and ship ProteinBERT models, from a laptop to a Ray cluster.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    version = sub.add_parser("version", help="print the pbp version")
    version.set_defaults(func=lambda _args: print(pbp.__version__))
    model_cmds.register(sub)
    data_cmds.register(sub)
    train_cmds.register(sub)
    finetune_cmds.register(sub)
    finetune_cmds.register_tune(sub)
    stack_cmds.register(sub)
    submit_cmds.register(sub)
    infra_cmds.register(sub)
    bench_cmds.register(sub)
    registry_cmds.register(sub)
    predict_cmds.register_predict(sub)
    predict_cmds.register_attention(sub)
    demo_cmds.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # Dotted overrides may follow options (`pbp submit pretrain --config X optim.lr=1e-4`): argparse leaves those
    # over when a positional came first, so they are collected here for the commands that take overrides.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*args.overrides, *extra]
        elif hasattr(args, "overrides") and (words := [e for e in extra if "=" not in e and not e.startswith("-")]):
            parser.error(f"{' '.join(words)}: a config override is KEY=VALUE (e.g. max_steps=100)")
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
    except (UserError, ValueError, FileNotFoundError) as e:
        # ConfigError, SequenceError, RecordError, DatasetError... are ValueErrors, and StackStateError,
        # ServiceError, SubmitError... UserErrors, with messages naming the culprit. Other errors keep a traceback,
        # and PBP_DEBUG=1 keeps it for these too (a ValueError may also be a bug: a job's log then shows where).
        if os.environ.get("PBP_DEBUG", "") not in ("", "0"):
            raise
        print(f"pbp: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into head/less that closed early (an OSError: before the next clause)
        return 0
    except OSError as e:
        if e.filename is None and e.errno in (errno.ENOSPC, errno.EDQUOT):  # a full disk that no path named
            print(f"pbp: error: {e.strerror or e}: free space where this command writes (its output, --tmp-dir, "
                  "TMPDIR)", file=sys.stderr)  # fmt: skip
            return 2
        if e.filename is None:  # a connection or other system error: a traceback says where
            raise
        # a file that cannot be read or written: not readable, a folder, a full disk
        other = f" -> {e.filename2}" if e.filename2 is not None else ""
        print(f"pbp: error: {e.filename}{other}: {e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # a command may say what was saved and how to continue
        print(f"pbp: interrupted{f': {e}' if str(e) else ''}", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
