"""The Trainer callbacks of ``specgate train`` (``lab.training.sft_run``): a rich progress bar
in place of tqdm, a time budget, and where a resumed run's ``train()`` call started.

The classes do not derive from transformers' ``TrainerCallback``: ``as_callback`` completes
them at run time, so importing the command does not import transformers and torch.
"""

from __future__ import annotations

import time
from typing import Any

from rich import progress as bar
from rich.console import Console


def as_callback(cls: type) -> type:
    """``cls`` completed with the Trainer's no-op events. Made at run time so that importing
    the command, which the CLI does, does not import transformers and torch (seconds)."""
    from transformers import TrainerCallback

    return type(cls.__name__, (cls, TrainerCallback), {})


class TimeBudget:
    """Trainer callback: ends training once ``minutes`` have passed since it began (this call;
    a resumed run gets a new budget), saving a checkpoint there. The learning-rate schedule is
    still the one for the planned steps: choose ``--max-steps`` near what fits the budget for
    a schedule that runs its course."""

    def __init__(self, minutes: float | None) -> None:
        self.seconds = None if minutes is None else minutes * 60.0
        self.started = 0.0
        self.stopped = False

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.started = time.monotonic()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.seconds is not None and time.monotonic() - self.started >= self.seconds \
                and state.global_step < state.max_steps:
            self.stopped = True
            control.should_training_stop = True
            control.should_save = True


class Session:
    """Trainer callback: where this ``train()`` call started, for its speed figures."""

    start_step = 0
    start_tokens = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.start_step, self.start_tokens = state.global_step, state.num_input_tokens_seen


class RichProgress:
    """Trainer callback: the progress as a rich bar (steps, last train loss) and eval lines,
    in place of tqdm."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress: bar.Progress | None = None
        self.task: bar.TaskID | None = None
        self.eval_task: bar.TaskID | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.progress = bar.Progress(
            bar.TextColumn("[bold]{task.description}"), bar.BarColumn(),
            bar.MofNCompleteColumn(), bar.TextColumn("loss {task.fields[loss]}"),
            bar.TimeElapsedColumn(), bar.TimeRemainingColumn(), console=self.console)
        self.progress.start()
        self.task = self.progress.add_task("train", total=state.max_steps,
                                           completed=state.global_step, loss="-")

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, completed=state.global_step)

    def on_prediction_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.progress is None:
            return
        if self.eval_task is None:
            loader = kwargs.get("eval_dataloader")
            total = len(loader) if loader is not None and hasattr(loader, "__len__") else None
            self.eval_task = self.progress.add_task("eval", total=total, loss="-")
        self.progress.advance(self.eval_task)

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.progress is not None and self.eval_task is not None:
            self.progress.remove_task(self.eval_task)
        self.eval_task = None

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None,
               **kwargs: Any) -> None:
        logs = logs or {}
        if self.progress is not None and self.task is not None and "loss" in logs:
            self.progress.update(self.task, loss=f"{logs['loss']:.4f}")
            if not self.console.is_terminal:  # a log file gets no live bar: a line per log
                self.console.print(f"step {state.global_step}/{state.max_steps}: loss "
                                   f"{logs['loss']:.4f}")
        if "eval_loss" in logs:
            self.console.print(f"step {state.global_step}: eval loss {logs['eval_loss']:.4f}")

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.close()

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
        self.progress = None
