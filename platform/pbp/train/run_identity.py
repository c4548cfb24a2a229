"""A run name names one run: running it again continues that run from its newest complete checkpoint, so it must
continue with the config the run started with.

Each commit record holds the run's identity: the config fields that define what is trained (model, data and its
digests, seed, corruption, loss, optimisation, stages), flattened to dotted keys. A re-run whose identity differs is
refused on the driver, before any worker starts, naming the fields, instead of loading the old weights into another
model (a shape error in every retried worker) or silently continuing with other data or settings. Fields a re-run
may change are left out: budgets (``max_steps``, a stage's ``max_epochs``), workers and resources, checkpoint
cadence and retention, tracking, and file paths whose contents are compared by digest instead. A checkpoint written
before identities were recorded is not checked.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

from pbp.config import to_dict
from pbp.errors import UserError

if TYPE_CHECKING:
    from pbp.train.checkpoint import CommitRecord

SHOWN = 6
"""Changed fields named with their values; the rest are counted."""


class RunConfigChangedError(UserError, ValueError):
    """A re-run of a run name with a config that differs from the one the run started with."""


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts and lists as ``{"a.b.0.c": value}``."""
    if isinstance(data, Mapping):
        items: Iterable[tuple[str, Any]] = ((str(k), v) for k, v in data.items())
    elif isinstance(data, list | tuple):
        items = ((str(i), v) for i, v in enumerate(data))
    else:
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in items:
        out.update(flatten(value, f"{prefix}.{key}" if prefix else key))
    return out


def changed_keys(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The keys of two flattened configs whose values differ (a key only one has counts), in order of appearance."""
    missing = object()
    return [k for k in dict.fromkeys([*before, *now]) if before.get(k, missing) != now.get(k, missing)]


def identity(cfg: Any, sections: Iterable[str], ignore: Iterable[str] = (), **extra: Any) -> dict[str, Any]:
    """The config's ``sections`` (top-level fields) flattened, without the keys matching an ``ignore`` pattern
    (``fnmatch``: ``stages.*.max_epochs``), plus ``extra`` (digests of what paths point at)."""
    plain = to_dict(cfg)
    flat = flatten({k: plain[k] for k in sections})
    patterns = list(ignore)
    return {k: v for k, v in flat.items() if not any(fnmatchcase(k, p) for p in patterns)} | extra


def check_same_run(newest: tuple[str, CommitRecord] | None, now: dict[str, Any], run_name: str) -> None:
    """Refuse to continue the run whose newest checkpoint is ``newest`` with a config of identity ``now``."""
    if newest is None or not newest[1].config:
        return
    url, commit = newest
    before = commit.config
    changed = changed_keys(before, now)
    if not changed:
        return

    def shown(d: dict[str, Any], k: str) -> str:
        text = repr(d[k]) if k in d else "(not set)"
        return text if len(text) <= 60 else text[:57] + "..."

    listed = "; ".join(f"{k}: {shown(before, k)} -> {shown(now, k)}" for k in changed[:SHOWN])
    more = f" (and {len(changed) - SHOWN} more)" if len(changed) > SHOWN else ""
    raise RunConfigChangedError(
        f"run {run_name!r} already exists ({url.rsplit('/', 1)[0]}, newest checkpoint {url.rsplit('/', 1)[-1]}) "
        f"and was started with another config: {listed}{more}. Running a run_name again continues that run, so "
        f"it takes the config the run started with: for a new run give another name (run_name={run_name}-2); "
        "to continue the old run, run its config again"
    )
