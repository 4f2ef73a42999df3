"""One line per asset as it finishes, while `churn-platform run` materializes the graph.

The run executes in this process; a watcher thread reads the run's events from the Dagster
instance (the same event log the UI reads) and prints `[k/N] asset  seconds  key figure`, plus a
"still running" line during long steps, so a user sees progress instead of Dagster's debug log.
On a terminal each "still running" line is replaced by the next line, so a whole run fits on one
screen; elsewhere (a log file, CI) every line stays.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import dagster as dg
from dagster._core.storage.dagster_run import RunsFilter

_EVENTS = {
    dg.DagsterEventType.STEP_START,
    dg.DagsterEventType.STEP_SUCCESS,
    dg.DagsterEventType.STEP_FAILURE,
    dg.DagsterEventType.ASSET_MATERIALIZATION,
}
# Metadata that says most about an asset, in this order of preference.
_KEY_FIGURES = (
    ("roc_auc", "ROC-AUC {:.4f}"),
    ("rows_scored", "{:,.0f} scored"),
    ("rows_out", "{:,.0f} rows"),
    ("row_count", "{:,.0f} rows"),
    ("rows_quarantined", "{:,.0f} quarantined"),
    ("champion_version", "champion v{}"),
)


def key_figure(metadata: Mapping[str, Any]) -> str:
    """The one or two numbers a user wants to see for an asset, from its metadata (a figure
    two entries give alike, such as a layer's rows out and row count, once)."""
    parts: list[str] = []
    for name, template in _KEY_FIGURES:
        entry = metadata.get(name)
        value = getattr(entry, "value", entry)
        if value is not None and len(parts) < 2 and template.format(value) not in parts:
            parts.append(template.format(value))
    return ", ".join(parts)


class RunProgress:
    """Watches the run tagged `tag` (key, value) and prints a line per finished asset."""

    def __init__(
        self,
        instance: dg.DagsterInstance,
        tag: tuple[str, str],
        total: int,
        emit: Callable[[str], None] = print,
        still_running_every: float = 30.0,
        transient: bool | None = None,
    ) -> None:
        self._instance, self._tag, self._total, self._emit = instance, tag, total, emit
        # "still running" lines replace each other on a terminal (printing to stdout).
        self._transient = (
            (emit is print and sys.stdout.isatty()) if transient is None else transient
        )
        self._pending = False
        self._every = still_running_every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="run-progress", daemon=True)
        self._done = 0
        self._started: dict[str, float] = {}
        self._nudged: dict[str, float] = {}
        self._finished: set[str] = set()
        self._cursor: str | None = None

    def __enter__(self) -> RunProgress:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._poll()  # whatever finished after the last tick
        if self._pending:
            sys.stdout.write("\r\033[K")
            sys.stdout.flush()
            self._pending = False

    def say(self, line: str, transient: bool = False) -> None:
        """Print a line; a transient one is replaced by the next line on a terminal."""
        if not self._transient:
            self._emit(line)
            return
        clear, end = "\r\033[K" if self._pending else "", "" if transient else "\n"
        sys.stdout.write(f"{clear}{line}{end}")
        sys.stdout.flush()
        self._pending = transient

    def _run_id(self) -> str | None:
        runs = self._instance.get_runs(filters=RunsFilter(tags={self._tag[0]: self._tag[1]}))
        return runs[0].run_id if runs else None

    def _watch(self) -> None:
        while not self._stop.wait(1.0):
            self._poll()

    def _poll(self) -> None:
        run_id = self._run_id()
        if run_id is None:
            return
        connection = self._instance.get_records_for_run(run_id, self._cursor, of_type=_EVENTS)
        self._cursor = connection.cursor
        for record in connection.records:
            entry = record.event_log_entry
            event = entry.dagster_event
            if event is None:
                continue
            step = event.step_key or ""
            if event.event_type == dg.DagsterEventType.STEP_START:
                self._started[step] = entry.timestamp
            elif event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION:
                self._report(event, entry.timestamp, step)
            else:
                self._finished.add(step)
                if event.event_type == dg.DagsterEventType.STEP_FAILURE:
                    self.say(f"{'':>9} {step}: failed (details below)")
        now = time.time()
        for step, began in self._started.items():
            if step not in self._finished and now - self._nudged.get(step, began) >= self._every:
                self._nudged[step] = now
                self.say(f"{'':>9} {step}: still running ({now - began:.0f} s)", transient=True)

    def _report(self, event: Any, timestamp: float, step: str) -> None:
        materialization = event.event_specific_data.materialization
        self._done += 1
        seconds = timestamp - self._started.get(step, timestamp)
        key = materialization.asset_key.to_user_string()
        figure = key_figure(materialization.metadata)
        counter = f"[{self._done:>2}/{self._total}]"
        self.say(f"{counter:>9} {key:<28} {seconds:6.1f} s  {figure}".rstrip())
