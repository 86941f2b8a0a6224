"""Train an LDM on a folder of your own images from the app: the engine's train-ae then train-ldm as child processes
(the app never imports torch), with their progress, loss curve, stop and resume."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from PySide6.QtCore import QProcess, Qt, QTimer, Signal
from PySide6.QtGui import QPixmap
from PySide6.QtWidgets import (QComboBox, QDialog, QDoubleSpinBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel,
                               QLineEdit, QProgressBar, QPushButton, QVBoxLayout, QWidget)

from app.project import data_dir

STAGES = ("autoencoder", "diffusion model")
KINDS = (("uncond", "New images like these (unconditional)"), ("txt2img", "Text to image (needs captions)"),
         ("inpaint", "Inpainting: fill holes in images like these"), ("sr4", "x4 upscaling of images like these"))


def training_commands(images: str, name: str, models_dir: str, size: int = 64, ae_minutes: float = 10.0,
                      ldm_minutes: float = 30.0, captions: str = "", steps: int = 0,
                      kind: str = "uncond") -> list[list[str]]:
    """`python -m engine` argument lists: the first stage, then the LDM of that kind (KINDS) on its latents, written to
    models_dir/name.safetensors; each run keeps its state under the app's data folder, so the same name resumes
    where it stopped."""
    runs = data_dir() / "training" / name
    common = ["--images", images, "--size", str(size), "--no-progress"] + (["--steps", str(steps)] if steps else [])
    ae = ["train-ae", *common, "--minutes", str(ae_minutes), "--run-dir", str(runs / "ae"),
          "--progress-file", str(runs / "ae.progress.json")]
    ldm = ["train-ldm", *common, "--minutes", str(ldm_minutes), "--ae", str(runs / "ae" / "ae.pt"),
           "--run-dir", str(runs / "ldm"), "--out", str(Path(models_dir) / f"{name}.safetensors"),
           "--progress-file", str(runs / "ldm.progress.json"), "--kind", kind]
    ldm += ["--captions", captions] if captions else []
    return [ae, ldm]


def engine_argv(args: list[str]) -> list[str]:
    """Arguments for sys.executable to run `python -m engine` with: in a PyInstaller bundle the app's own binary
    takes `--engine` instead (app.__main__)."""
    return ["--engine", *args] if getattr(sys, "frozen", False) else ["-m", "engine", *args]


def _arg(cmd: list[str], flag: str) -> str:
    return cmd[cmd.index(flag) + 1]


class TrainDialog(QDialog):
    """Folder, optional captions, name, size and minutes per stage; Start runs both stages, Stop ends the running one
    (Start again resumes it), and the new model lands in the models folder. Closing the dialog leaves the training
    running; the menu shows it again."""

    trained = Signal(str)  # the new checkpoint's path

    def __init__(self, models_dir: str, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("Train a model on a folder of images")
        self.setMinimumWidth(560)
        self.models_dir, self.steps = models_dir, 0
        self.images, self.captions, self.name = QLineEdit(), QLineEdit(), QLineEdit("my-model")
        self.captions.setPlaceholderText("optional: captions.json ({file name: caption}) for a text model")
        self.kind = QComboBox()
        for value, text in KINDS:
            self.kind.addItem(text, value)
        self.size = QComboBox()
        for s in (64, 128, 256):
            self.size.addItem(f"{s} px", s)
        self.ae_minutes = QDoubleSpinBox(minimum=0.1, maximum=600, value=10, suffix=" min")
        self.ldm_minutes = QDoubleSpinBox(minimum=0.1, maximum=1440, value=30, suffix=" min")
        form = QFormLayout()
        for label, edit, pick in (("Images", self.images, self._pick_folder), ("Captions", self.captions,
                                                                                self._pick_captions)):
            row = QHBoxLayout()
            row.addWidget(edit, 1)
            browse = QPushButton("Browse...")
            browse.clicked.connect(pick)
            row.addWidget(browse)
            form.addRow(label, row)
        form.addRow("Model", self.kind)
        form.addRow("Name", self.name)
        form.addRow("Image size", self.size)
        form.addRow("Autoencoder", self.ae_minutes)
        form.addRow("Diffusion model", self.ldm_minutes)
        self.bar, self.status, self.curve = QProgressBar(), QLabel(wordWrap=True), QLabel()
        self.start_button, self.stop_button = QPushButton("Start"), QPushButton("Stop")
        self.start_button.clicked.connect(self.start)
        self.stop_button.clicked.connect(self.stop)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.stop_button)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        for w in (self.bar, self.status, self.curve):
            lay.addWidget(w)
        lay.addLayout(buttons)
        self.process: QProcess | None = None
        self.queue: list[list[str]] = []
        self.stage, self.log = 0, ""
        self.poll = QTimer(self, interval=500)
        self.poll.timeout.connect(self._show_progress)
        self._busy(False)

    def _busy(self, busy: bool) -> None:
        self.start_button.setEnabled(not busy)
        self.stop_button.setEnabled(busy)

    def _pick_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder of images")
        if folder:
            self.images.setText(folder)

    def _pick_captions(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Captions", self.images.text(), "JSON (*.json)")
        if path:
            self.captions.setText(path)

    def start(self) -> bool:
        images, name = self.images.text().strip(), self.name.text().strip()
        if not images or not Path(images).is_dir():
            self.status.setText("Choose a folder of images first.")
            return False
        if not re.fullmatch(r"[\w.-]+", name):
            self.status.setText("Name the model with letters, digits, '-', '_' or '.' only.")
            return False
        captions, kind = self.captions.text().strip(), self.kind.currentData()
        if kind == "txt2img" and not Path(captions).is_file():
            self.status.setText("A text model needs captions: a JSON file of {file name: caption}.")
            return False
        self.queue = training_commands(images, name, self.models_dir, self.size.currentData(), self.ae_minutes.value(),
                                       self.ldm_minutes.value(), captions, self.steps, kind)
        self.stage = 0
        self._busy(True)
        self._next()
        return True

    def _next(self) -> None:
        cmd = self.queue[self.stage]
        self.log = ""
        self.process = QProcess(self)
        self.process.setProcessChannelMode(QProcess.ProcessChannelMode.MergedChannels)
        self.process.readyReadStandardOutput.connect(self._read)
        self.process.finished.connect(self._finished)
        self.process.errorOccurred.connect(self._failed_to_start)
        self.process.start(sys.executable, engine_argv(cmd))
        self.status.setText(f"Training the {STAGES[self.stage]} ({self.stage + 1} of {len(self.queue)})...")
        self.poll.start()

    def _failed_to_start(self, error) -> None:
        if error == QProcess.ProcessError.FailedToStart:
            self.poll.stop()
            self._busy(False)
            self.status.setText(f"Cannot start the training: {self.process.errorString()}")

    def _read(self) -> None:
        self.log = (self.log + bytes(self.process.readAllStandardOutput()).decode(errors="replace"))[-4000:]

    def _show_progress(self) -> None:
        cmd = self.queue[self.stage]
        try:
            p = json.loads(Path(_arg(cmd, "--progress-file")).read_text())
        except (OSError, ValueError):
            return
        share = p["step"] / p["steps"] if p.get("steps") else p["elapsed_min"] / max(p["minutes"], 1e-9)
        self.bar.setValue(round(100 * (self.stage + min(share, 1.0)) / len(self.queue)))
        loss = f", loss {p['loss']:.4f}" if p.get("loss") is not None else ""
        steps = f" of {p['steps']}" if p.get("steps") else ""
        self.status.setText(f"Training the {STAGES[self.stage]} ({self.stage + 1} of {len(self.queue)}): step "
                            f"{p['step']}{steps}, {p['elapsed_min']:.1f} of {p['minutes']:g} min{loss}")
        curve = Path(_arg(cmd, "--run-dir")) / "loss.png"
        if curve.exists():
            self.curve.setPixmap(QPixmap(str(curve)).scaledToWidth(max(self.width() - 40, 200),
                                                                     Qt.TransformationMode.SmoothTransformation))

    def _finished(self, code: int, status) -> None:
        self._read()
        self._show_progress()
        self.poll.stop()
        ok, stopped = code == 0 and status == QProcess.ExitStatus.NormalExit, bool(self.process.property("stopped"))
        if ok and not stopped and self.stage + 1 < len(self.queue):
            self.stage += 1
            return self._next()
        self._busy(False)
        if ok and self.stage + 1 == len(self.queue):
            out = _arg(self.queue[-1], "--out")
            self.bar.setValue(self.bar.value() if stopped else 100)
            more = " Start trains it further." if stopped else ""
            self.status.setText(("Stopped early: " if stopped else "Done: ") + f"{Path(out).name} is in your models "
                                f"folder and chosen in the model list.{more}")
            self.trained.emit(out)
        elif stopped:
            self.status.setText(f"Stopped during the {STAGES[self.stage]}. Start resumes it where it stopped.")
        else:
            last = [line for line in self.log.splitlines() if line.strip()][-3:]
            self.status.setText(f"Training failed in the {STAGES[self.stage]}: " + " / ".join(last))

    def stop(self) -> None:
        """SIGTERM: the run saves its state (and what it has trained) and ends; Start resumes it."""
        if self.running:
            self.process.setProperty("stopped", True)
            self.process.terminate()
            self.status.setText(f"Stopping the {STAGES[self.stage]} (saving its state)...")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.state() != QProcess.ProcessState.NotRunning
