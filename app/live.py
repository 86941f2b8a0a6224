"""Live mode (Krita AI Diffusion's live painting): every edit regenerates after a short pause, at one fixed seed, and
the newest image shows beside the canvas; Keep adds it to the history like a Generate result."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
from PySide6.QtCore import QObject, Qt, QTimer, Signal
from PySide6.QtGui import QPixmap
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QSizePolicy, QSpinBox, QVBoxLayout, QWidget

from app.canvas import to_qimage
from engine import api

EDITS = ("params", "size", "image", "mask", "labels", "boxes", "region", "control", "all")


class LivePanel(QWidget):
    """The live image scaled to fit, what it is (step or time), Keep and Apply."""

    keepRequested = Signal()
    applyRequested = Signal()

    def __init__(self, parent=None):
        super().__init__(parent)
        self.image: np.ndarray | None = None
        self.view = QLabel("Live: paint, draw boxes or type, and the image follows",
                           alignment=Qt.AlignmentFlag.AlignCenter, wordWrap=True)
        self.view.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Ignored)
        self.view.setMinimumSize(160, 160)
        self.info = QLabel()
        self.steps = QSpinBox(minimum=0, maximum=200, prefix="Steps: ")
        self.steps.setSpecialValueText("Steps: as Generate")
        self.steps.setToolTip("Fewer steps answer sooner while you paint; Keep and Generate are unaffected")
        self.keep_button = QPushButton("Keep")
        self.keep_button.setToolTip("Add the live image to the history and the outputs folder (Ctrl+Shift+Enter)")
        self.apply_button = QPushButton("Apply")
        self.apply_button.setToolTip("Keep the live image and lay it onto the canvas (one undo step)")
        for b in (self.keep_button, self.apply_button):
            b.setEnabled(False)
        buttons = QHBoxLayout()
        buttons.addWidget(self.steps)
        buttons.addWidget(self.keep_button)
        buttons.addWidget(self.apply_button)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.view, 1)
        lay.addWidget(self.info)
        lay.addLayout(buttons)
        self.keep_button.clicked.connect(self.keepRequested)
        self.apply_button.clicked.connect(self.applyRequested)

    def show_image(self, rgb: np.ndarray | None, info: str = "", final: bool = False) -> None:
        if rgb is not None:
            self.image = np.asarray(rgb, np.uint8)
            self._fit()
        self.info.setText(info)
        if final:
            self.keep_button.setEnabled(rgb is not None)
            self.apply_button.setEnabled(rgb is not None)

    def _fit(self) -> None:
        if self.image is not None:
            pix = QPixmap.fromImage(to_qimage(self.image))
            self.view.setPixmap(pix.scaled(self.view.size(), Qt.AspectRatioMode.KeepAspectRatio,
                                           Qt.TransformationMode.SmoothTransformation))

    def resizeEvent(self, e) -> None:
        super().resizeEvent(e)
        self._fit()


class LiveMode(QObject):
    """Runs the window's current request as live jobs: one at a time, the newest edit wins (a running live job is
    cancelled), a user's own Generate goes first, and results stay out of the history until kept."""

    def __init__(self, win, delay_ms: int = 300):
        super().__init__(win)
        self.win = win
        self.panel = LivePanel()
        self.enabled = False
        self.seed = 0
        self.job: int | None = None
        self.pending = False
        self.kept: tuple | None = None  # (Result, Request, region, rect) of the newest finished live job
        self._submitted: tuple | None = None
        self.timer = QTimer(self, singleShot=True, interval=delay_ms)
        self.timer.timeout.connect(self.run)
        self.panel.steps.valueChanged.connect(lambda _: self.changed("params"))

    def set_enabled(self, on: bool) -> None:
        self.enabled = bool(on)
        if self.enabled:
            self.seed = self.win.doc.resolve_seed()
            self.timer.start(0)
        else:
            self.timer.stop()
            self.pending = False
            if self.job is not None:
                self.win.bridge.cancel(self.job)

    def changed(self, what: str) -> None:
        """The window's document changed (any document the window shows)."""
        if self.enabled and what in EDITS:
            self.timer.start()

    def owns(self, ev) -> bool:
        return ev.job_id is not None and ev.job_id == self.job

    def run(self) -> None:
        """Submit the current request as a live job, or cancel the running live job and come back when it ends."""
        if not self.enabled:
            return
        if self.win.bridge.busy:
            self.pending = True
            if self.job is not None:
                self.win.bridge.cancel(self.job)
            return
        self.pending = False
        doc = self.win.doc
        try:
            req = replace(doc.to_request(self.win.settings, seed=self.seed), batch_size=1, best_of=1)
            req.steps = self.panel.steps.value() or req.steps
            self._submitted = (req, doc.region, doc.generation_rect())
            self.job = self.win.bridge.submit(req)
        except Exception as e:  # a canvas the request cannot be made from yet: say so here, no dialog per edit
            self.panel.show_image(None, f"Cannot run: {api.describe_exception(e)}")

    def preview(self, ev: api.Preview) -> None:
        self.panel.show_image(ev.image, f"step {ev.step}")

    def finished(self, ev) -> None:
        """A live job's Result, Failed or Cancelled; the next edit (or one made meanwhile) runs again."""
        self.job = None
        if isinstance(ev, api.Result) and ev.images:
            self.kept = (ev, *self._submitted)
            self.panel.show_image(ev.images[0], f"seed {self.seed} · {ev.elapsed_s or 0:.1f} s", final=True)
        elif isinstance(ev, api.Failed):
            self.panel.show_image(None, f"Failed: {ev.message}")
        self.resume()

    def resume(self) -> None:
        """After any job ends: run the edit that arrived while it was busy."""
        if self.enabled and self.pending:
            self.timer.start(0)
