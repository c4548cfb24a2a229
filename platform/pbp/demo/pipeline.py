"""The demo pipeline: synthetic corpus -> shards in the stack's S3 -> pretraining (2 Ray nodes, DeepSpeed) -> a
search campaign fine-tuning it on a generated task -> the best model registered and promoted through the gate ->
``pbp predict`` and ``pbp attention`` from ``@champion`` -> a summary with each step's time and figure.

Each long step runs as the ``pbp`` command a user would type, in its own process (Ray and DeepSpeed state never
leak between steps), its whole output in ``<out>/logs/<step>.log`` and its progress lines on the terminal. The first
step that fails stops the demo with the tail of its log. A second run reuses what the first made: the stack, the
dataset (same prefix), the pretraining run (resumed: already done) and the campaign (``--resume``: its trials are
kept), so it only registers, promotes and predicts again.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from pbp.errors import UserError
from pbp.names import check_name

QUIET = re.compile(r"^(\s*$|\(|20\d\d[-/]|[╭│╰├┌└]|Downloading artifacts|🏃|🧪|View run|View experiment|Trial status|"
                   r"Current time|Logical resource|Number of trials|Resources requested|INFO|WARNING|\[W |\s+warnings\.)")  # fmt: skip


class DemoStepError(UserError):
    """A demo step failed; the message holds the step, its log file and the log's tail."""


@dataclass
class DemoConfig:
    """``configs/demo/default.yaml``; ``configs/demo/small.yaml`` is the test's."""

    name: str = "demo"
    """Prefix of every run, campaign, dataset and registered model the demo makes."""
    out: str = "build/demo"
    proteins: int = 2000
    """Synthetic proteins (pretraining corpus; the fine-tuning task is drawn from the short ones)."""
    min_go_records: int = 20
    pretrain_steps: int = 200
    trials: int = 4
    trial_epochs: list[int] = field(default_factory=lambda: [2, 2, 1])
    """Epochs of the fine-tuning stages (frozen, unfrozen, final) in each trial."""
    task_max_rows: int = 0
    """Rows of each task file a trial reads (0: all)."""
    predict_rows: int = 20

    def __post_init__(self) -> None:
        check_name(self.name, "name")
        for key in ("proteins", "min_go_records", "pretrain_steps", "trials", "predict_rows"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.task_max_rows < 0:
            raise ValueError(f"task_max_rows must be >= 0, got {self.task_max_rows}")
        if len(self.trial_epochs) != 3 or min(self.trial_epochs) < 1:
            raise ValueError(
                f"trial_epochs: three epoch counts >= 1 (frozen, unfrozen, final), got {self.trial_epochs}"
            )

    # A second `make demo` reuses what the first made, found by name; the names carry the settings each thing is
    # made from, so `pbp demo trials=6` makes a new campaign instead of reporting the old one's 4 trials.

    @property
    def data_key(self) -> str:
        """The corpus' settings: its dataset and the pretraining run on it (whose steps may grow: it continues)."""
        return f"p{self.proteins}-g{self.min_go_records}"

    @property
    def pretrain_run(self) -> str:
        return f"{self.name}-pretrain-{self.data_key}"

    @property
    def campaign_name(self) -> str:
        """``<name>-campaign-<digest>`` of the pretrained model's settings and the campaign's."""
        made_from = (self.data_key, self.pretrain_steps, self.trials, list(self.trial_epochs), self.task_max_rows)
        return f"{self.name}-campaign-{hashlib.sha256(repr(made_from).encode()).hexdigest()[:8]}"


@dataclass
class StepResult:
    name: str
    seconds: float
    figure: str


@dataclass
class DemoSummary:
    steps: list[StepResult]
    links: dict[str, str]
    files: dict[str, str]

    def render(self) -> str:
        lines = ["", "pbp demo: done", f"{'step':16} {'time':>8}   figure"]
        lines += [f"{s.name:16} {s.seconds:7.1f}s   {s.figure}" for s in self.steps]
        lines.append(f"{'total':16} {sum(s.seconds for s in self.steps):7.1f}s")
        lines += ["", *(f"{k:16} {v}" for k, v in self.links.items()), ""]
        lines += [f"{k:16} {v}" for k, v in self.files.items()]
        return "\n".join(lines)


class Demo:
    def __init__(self, cfg: DemoConfig, echo: Callable[[str], None] = print) -> None:
        self.cfg, self.echo = cfg, echo
        self.out = Path(cfg.out).resolve()
        self.logs = self.out / "logs"
        self.steps: list[StepResult] = []
        self.state: dict[str, Any] = {}

    # ---- running steps ----------------------------------------------------------------------------------------

    def step(self, name: str, fn: Callable[[], str]) -> None:
        self.echo(f"[demo] {len(self.steps) + 1}. {name} ...")
        t0 = time.monotonic()
        try:
            figure = fn()
        except DemoStepError:
            raise  # a `pbp` command's failure, already with its log's tail
        except Exception as e:  # an in-process step (task, register, promote, ...): its traceback to its log
            self.logs.mkdir(parents=True, exist_ok=True)
            log_path = self.logs / f"{name}.log"
            with log_path.open("a") as log:  # after the output of a `pbp` command the step ran, if any
                log.write(traceback.format_exc())
            raise DemoStepError(f"demo step {name!r} failed: {type(e).__name__}: {e}\n"
                                f"its traceback: {log_path}") from None  # fmt: skip
        self.steps.append(StepResult(name, time.monotonic() - t0, figure))
        self.echo(f"[demo]    {name}: {figure} ({time.monotonic() - t0:.0f} s)")

    def pbp(self, step: str, *args: str) -> str:
        """Run ``pbp ARGS`` as a user would; its output to the step's log, progress lines echoed -> the output."""
        self.logs.mkdir(parents=True, exist_ok=True)
        log_path = self.logs / f"{step}.log"
        cmd = [str(Path(sys.executable).with_name("pbp")), *args]
        lines: list[str] = []
        last = time.monotonic()
        with log_path.open("w") as log, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                         text=True, bufsize=1) as proc:  # fmt: skip
            log.write("$ pbp " + " ".join(args) + "\n")
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                lines.append(line)
                text = re.sub(r"\x1b\[[0-9;]*m", "", line.rstrip())
                if not QUIET.match(text) or time.monotonic() - last > 60:
                    self.echo(f"         {text[:150]}")
                    last = time.monotonic()
        if proc.returncode != 0:
            tail = "".join(lines[-40:])
            raise DemoStepError(f"demo step {step!r} failed (exit {proc.returncode}); its log: {log_path}\n"
                                f"---- last lines ----\n{tail}")  # fmt: skip
        return "".join(lines)


def run_demo(cfg: DemoConfig, echo: Callable[[str], None] = print) -> DemoSummary:
    from pbp.demo import steps

    demo = Demo(cfg, echo)
    for name, fn in steps.STEPS:
        demo.step(name, partial(fn, demo))
    return steps.summary(demo)
