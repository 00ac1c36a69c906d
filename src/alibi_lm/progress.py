"""Progress for terminals and for logs: tqdm's bar on a terminal, a line every few percent anywhere else.

tqdm redraws its bar several times a second; written to a file or a CI log, every redraw stays (the demo's log held
one per 3-4 training steps). Where stderr is not a terminal, `progress_bar` prints one line per `LINE_EVERY` of the
work instead, and `LineProgressCallback` does the same for Trainer's training loop.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from tqdm.auto import tqdm
from transformers import TrainerCallback

LINE_EVERY = 0.05  # a line per 5% of the work


def is_terminal(stream: TextIO | None = None) -> bool:
    stream = sys.stderr if stream is None else stream
    return bool(getattr(stream, "isatty", lambda: False)())


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds < 3600 else f"{seconds // 3600}:{seconds // 60 % 60:02d}h"


class LineBar:
    """tqdm's interface (`update`, `close`, iteration, a context manager) printing a line per `every` of `total`."""

    def __init__(
        self,
        iterable: Iterable | None = None,
        *,
        total: int | None = None,
        desc: str = "",
        unit: str = "it",
        every: float = LINE_EVERY,
        file: TextIO | None = None,
    ) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.lines, self.file = max(1, round(1 / every)), file  # lines over the whole of `total`
        self.n, self.printed, self._start = 0, 0, time.perf_counter()

    def line(self, extra: str = "") -> str:
        elapsed = time.perf_counter() - self._start
        rate = self.n / elapsed if elapsed > 0 else 0.0
        if self.total:
            left = (self.total - self.n) / rate if rate > 0 else 0.0
            head = f"{self.desc}: {self.n / self.total:4.0%} {self.n}/{self.total} {self.unit}"
            tail = f"{_duration(elapsed)} elapsed, {_duration(left)} left"
        else:
            head, tail = f"{self.desc}: {self.n} {self.unit}", f"{_duration(elapsed)} elapsed"
        return f"{head}, {tail}{f', {extra}' if extra else ''}"

    def update(self, n: int = 1, extra: str = "") -> None:
        self.n += n
        reached = self.n * self.lines // self.total if self.total else 0  # whole steps of `every`, in integers
        if reached > self.printed:
            self.printed = reached
            print(self.line(extra), file=self.file or sys.stderr, flush=True)

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        """tqdm's: the name the next lines carry (a bar over several stages, e.g. `alibi-lm bench`'s)."""
        self.desc = desc or ""

    def close(self) -> None:
        pass

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable or ():
            yield item
            self.update()

    def __enter__(self) -> LineBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress_bar(
    iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it", disable=False
) -> tqdm | LineBar:
    """tqdm on a terminal, `LineBar` elsewhere, a silent tqdm when `disable`."""
    if disable or is_terminal():
        return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable)
    return LineBar(iterable, total=total, desc=desc, unit=unit)


class LineProgressCallback(TrainerCallback):
    """Trainer's progress as a line per `LINE_EVERY` of `max_steps`, with the last logged loss, for logs.

    Added in place of Trainer's tqdm bar (`disable_tqdm=True`, which also prints each log dict as a line) where
    stderr is not a terminal.
    """

    def __init__(self) -> None:
        self.bar: LineBar | None = None
        self.loss: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.bar = LineBar(total=state.max_steps, desc="training", unit="steps")
            self.bar.update(state.global_step)  # a resumed run starts where it stopped

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.loss = float(logs["loss"])

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n, extra="" if self.loss is None else f"loss {self.loss:.3f}")


__all__ = ["LINE_EVERY", "LineBar", "LineProgressCallback", "is_terminal", "progress_bar"]
