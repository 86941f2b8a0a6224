"""The one place engine events become Qt signals: events arrive on the engine thread, are queued to the GUI thread."""
from __future__ import annotations

import sys

from PySide6.QtCore import QObject, Qt, Signal, Slot

from engine import api


def fast_pyside_import_scan() -> bool:
    """PySide6 asks of every module imported after it whether its source mentions PySide6, through inspect.getsource,
    whose module lookup walks sys.modules: torch's lazy imports (sympy, dynamo) on the engine thread then crawl.
    Answer the same question by reading the file. Returns whether the hook was found."""
    feature = sys.modules.get("shibokensupport.feature")
    original = getattr(feature, "_mod_uses_pyside", None)
    if original is None:
        return False
    if getattr(original, "is_fast", False):
        return True

    def uses_pyside(module) -> bool:
        path = getattr(module, "__file__", None)
        if not (isinstance(path, str) and path.endswith(".py")):
            return False
        try:
            with open(path, "rb") as f:
                return b"PySide6" in f.read()
        except OSError:
            return False

    uses_pyside.is_fast = True
    feature._mod_uses_pyside = uses_pyside
    return True


fast_pyside_import_scan()


class EngineBridge(QObject):
    """Owns an engine.api.Engine; re-emits its events as typed signals on the thread this object lives in."""

    started = Signal(object)  # api.Started
    progress = Signal(object)  # api.Progress
    preview = Signal(object)  # api.Preview
    result = Signal(object)  # api.Result
    failed = Signal(object)  # api.Failed
    cancelled = Signal(object)  # api.Cancelled
    _relay = Signal(object)

    def __init__(self, runner: api.Runner | None = None, parent: QObject | None = None):
        super().__init__(parent)
        self._relay.connect(self._dispatch, Qt.ConnectionType.QueuedConnection)
        self.engine = api.Engine(on_event=self._relay.emit, runner=runner)
        self.current_job: int | None = None

    def submit(self, request: api.Request) -> int:
        self.current_job = self.engine.submit(request)
        return self.current_job

    def cancel(self, job_id: int | None = None) -> None:
        job = self.current_job if job_id is None else job_id
        if job is not None:
            self.engine.cancel(job)

    @property
    def busy(self) -> bool:
        return self.current_job is not None

    def shutdown(self) -> None:
        self.engine.shutdown(timeout=5.0)

    @Slot(object)
    def _dispatch(self, ev: api.Event) -> None:
        while not self.engine.events.empty():
            self.engine.events.get_nowait()
        if isinstance(ev, api.Started):
            self.started.emit(ev)
        elif isinstance(ev, api.Progress):
            self.progress.emit(ev)
        elif isinstance(ev, api.Preview):
            self.preview.emit(ev)
        elif isinstance(ev, (api.Result, api.Failed, api.Cancelled)):
            if ev.job_id == self.current_job:
                self.current_job = None
            {api.Result: self.result, api.Failed: self.failed, api.Cancelled: self.cancelled}[type(ev)].emit(ev)
