"""File > Merge models: the engine's `merge` command (A1111's Checkpoint Merger) as a child process, so the app still
imports no torch; the merged model lands in the models folder and is chosen."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from PySide6.QtCore import QProcess, Signal
from PySide6.QtWidgets import (QComboBox, QDialog, QDoubleSpinBox, QFormLayout, QHBoxLayout, QLabel, QLineEdit,
                               QProgressBar, QPushButton, QVBoxLayout, QWidget)

from app.training import engine_argv
from engine import api

MODES = (("sum", "Weighted sum: A x (1 - m) + B x m"), ("diff", "Add difference: A + (B - C) x m"))


def merge_command(a: str, b: str, c: str, mode: str, multiplier: float, out: str) -> list[str]:
    """`python -m engine merge` arguments for these models (C only for add difference)."""
    cmd = ["merge", a, b, "--mode", mode, "--multiplier", f"{multiplier:g}", "--out", out]
    return cmd + (["--c", c] if mode == "diff" else [])


class MergeDialog(QDialog):
    """Three model choices, the mode, the multiplier and a name; Merge runs it and reports the result or the error."""

    merged = Signal(str)  # the new checkpoint's path

    def __init__(self, models: list[api.ModelInfo], models_dir: str, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("Merge models")
        self.setMinimumWidth(520)
        self.models_dir = models_dir
        self.a, self.b, self.c = QComboBox(), QComboBox(), QComboBox()
        for combo in (self.a, self.b, self.c):
            for m in models:
                if not m.error and m.family:
                    combo.addItem(f"{m.name} ({m.family})", m.path)
        self.mode = QComboBox()
        for value, text in MODES:
            self.mode.addItem(text, value)
        self.multiplier = QDoubleSpinBox(minimum=0.0, maximum=2.0, singleStep=0.05, decimals=2, value=0.5)
        self.name = QLineEdit("merged")
        form = QFormLayout()
        for label, w in (("Model A", self.a), ("Model B", self.b), ("Model C", self.c), ("Mode", self.mode),
                         ("Multiplier m", self.multiplier), ("Name", self.name)):
            form.addRow(label, w)
        self.bar, self.status = QProgressBar(), QLabel(wordWrap=True)
        self.merge_button = QPushButton("Merge")
        self.merge_button.clicked.connect(self.start)
        self.mode.currentIndexChanged.connect(lambda: self.c.setEnabled(self.mode.currentData() == "diff"))
        self.c.setEnabled(False)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(self.merge_button)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.bar)
        lay.addWidget(self.status)
        lay.addLayout(buttons)
        self.process: QProcess | None = None
        self.out, self.log = "", ""

    def start(self) -> bool:
        name = self.name.text().strip()
        if not re.fullmatch(r"[\w.-]+", name):
            self.status.setText("Name the model with letters, digits, '-', '_' or '.' only.")
            return False
        if self.a.currentData() is None:
            self.status.setText("There are no models to merge yet.")
            return False
        self.out = str(Path(self.models_dir) / f"{name}.safetensors")
        if Path(self.out).exists():
            self.status.setText(f"{Path(self.out).name} is already in the models folder: choose another name.")
            return False
        Path(self.models_dir).mkdir(parents=True, exist_ok=True)
        cmd = merge_command(self.a.currentData(), self.b.currentData(), self.c.currentData(), self.mode.currentData(),
                            self.multiplier.value(), self.out)
        self.log = ""
        self.process = QProcess(self)
        self.process.setProcessChannelMode(QProcess.ProcessChannelMode.MergedChannels)
        self.process.readyReadStandardOutput.connect(self._read)
        self.process.finished.connect(self._finished)
        self.process.start(sys.executable, engine_argv(cmd))
        self.merge_button.setEnabled(False)
        self.status.setText("Merging...")
        return True

    def _read(self) -> None:
        self.log += bytes(self.process.readAllStandardOutput()).decode(errors="replace")
        for line in self.log.splitlines()[-3:]:
            try:
                p = json.loads(line)
            except ValueError:
                continue
            if "of" in p:
                self.bar.setValue(round(100 * p["tensor"] / max(p["of"], 1)))

    def _finished(self, code: int, status) -> None:
        self._read()
        self.merge_button.setEnabled(True)
        if code == 0 and status == QProcess.ExitStatus.NormalExit:
            self.bar.setValue(100)
            self.status.setText(f"Done: {Path(self.out).name} is in your models folder and chosen in the model list.")
            self.merged.emit(self.out)
        else:
            last = [line for line in self.log.splitlines() if line.strip()][-2:]
            self.status.setText("Merge failed: " + " / ".join(last))
