"""Settings dialog, box label prompt, canvas extension, keyboard shortcuts, and error-reporting helpers for slots."""
from __future__ import annotations

import functools
import traceback
from dataclasses import replace

from PySide6.QtWidgets import (QComboBox, QDialog, QDialogButtonBox, QDoubleSpinBox, QFileDialog, QFormLayout,
                               QHBoxLayout, QHeaderView, QLineEdit, QPushButton, QSpinBox, QTableWidget,
                               QTableWidgetItem, QVBoxLayout, QWidget)

from app.settings import DEVICES, PRECISIONS, TILE_MODES, AppSettings


def guarded(fn):
    """Slot decorator: an exception becomes a readable message on the window (self.report_error), never a crash."""

    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        try:
            return fn(self, *args, **kwargs)
        except Exception as e:
            self.report_error(f"{fn.__name__.replace('_', ' ').strip().capitalize()} failed",
                              f"{type(e).__name__}: {e}", traceback.format_exc())
            return None

    return wrapper


def _folder_row(edit: QLineEdit, parent: QWidget) -> QHBoxLayout:
    row = QHBoxLayout()
    browse = QPushButton("Browse...")
    browse.clicked.connect(lambda: edit.setText(QFileDialog.getExistingDirectory(parent, "Choose folder", edit.text()) or edit.text()))
    row.addWidget(edit, 1)
    row.addWidget(browse)
    return row


class SettingsDialog(QDialog):
    """Edits AppSettings: folders, device, precision, tiling, preview rate, CPU memory budget, autosave."""

    def __init__(self, settings: AppSettings, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("Settings")
        self._base = settings
        self.models_dir = QLineEdit(settings.models_dir, placeholderText="extra models folder (optional)")
        self.outputs_dir = QLineEdit(settings.outputs_dir, placeholderText=str(settings.outputs_path()))
        self.device, self.precision, self.tile_mode = QComboBox(), QComboBox(), QComboBox()
        for combo, items, value in ((self.device, DEVICES, settings.device), (self.precision, PRECISIONS, settings.precision),
                                    (self.tile_mode, TILE_MODES, settings.tile_mode)):
            combo.addItems(items)
            combo.setCurrentText(value)
        self.tile_size = QSpinBox(minimum=16, maximum=512, singleStep=16, value=settings.tile_size)
        self.tile_overlap = QSpinBox(minimum=0, maximum=256, singleStep=8, value=settings.tile_overlap)
        self.preview = QDoubleSpinBox(minimum=0.0, maximum=10.0, singleStep=0.05, value=settings.preview_interval_s, suffix=" s")
        self.memory = QSpinBox(minimum=0, maximum=1_000_000, singleStep=512, value=settings.memory_budget_mb, suffix=" MB")
        self.memory.setSpecialValueText("no limit")
        self.autosave = QSpinBox(minimum=10, maximum=3600, value=settings.autosave_interval_s, suffix=" s")
        form = QFormLayout(self)
        form.addRow("Models folder", _folder_row(self.models_dir, self))
        form.addRow("Outputs folder", _folder_row(self.outputs_dir, self))
        form.addRow("Device", self.device)
        form.addRow("Precision", self.precision)
        form.addRow("Tiling", self.tile_mode)
        form.addRow("Tile size (latent)", self.tile_size)
        form.addRow("Tile overlap", self.tile_overlap)
        form.addRow("Preview every", self.preview)
        form.addRow("CPU memory budget", self.memory)
        form.addRow("Autosave every", self.autosave)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)

    def value(self) -> AppSettings:
        return replace(self._base, models_dir=self.models_dir.text().strip(), outputs_dir=self.outputs_dir.text().strip(),
                       device=self.device.currentText(), precision=self.precision.currentText(),
                       tile_mode=self.tile_mode.currentText(), tile_size=self.tile_size.value(),
                       tile_overlap=self.tile_overlap.value(), preview_interval_s=self.preview.value(),
                       memory_budget_mb=self.memory.value(), autosave_interval_s=self.autosave.value())


class BoxLabelDialog(QDialog):
    """Type or pick a class for a new layout box, and optionally a region prompt."""

    def __init__(self, names, last: str = "", parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("Box label")
        self.label = QComboBox(editable=True)
        self.label.addItems(list(names))
        self.label.setCurrentText(last)
        self.prompt = QLineEdit(placeholderText="region prompt (optional)")
        form = QFormLayout(self)
        form.addRow("Class", self.label)
        form.addRow("Prompt", self.prompt)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)

    def answer(self) -> tuple[str, str | None] | None:
        label = self.label.currentText().strip()
        return (label, self.prompt.text().strip() or None) if label else None


class ExtendDialog(QDialog):
    """Pixels to add on each side of the canvas (outpainting); the new area is masked for the next generation."""

    SIDES = ("Left", "Top", "Right", "Bottom")

    def __init__(self, width: int, height: int, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("Extend canvas")
        self.sides = {name: QSpinBox(minimum=0, maximum=4096, singleStep=8, suffix=" px") for name in self.SIDES}
        self.sides["Right"].setValue(max(8, width // 4 // 8 * 8))
        form = QFormLayout(self)
        for name, box in self.sides.items():
            form.addRow(name, box)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)

    def pads(self) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) in pixels."""
        return tuple(self.sides[name].value() for name in self.SIDES)


CANVAS_KEYS = (("Brush size", "[  ]"), ("Brush hardness", "Shift+[  Shift+]"), ("Pan", "Space+drag, middle drag"),
               ("Zoom", "Wheel"), ("Erase labels (semantic brush)", "Alt+drag"),
               ("Pick the colour under the pointer (colour brush)", "Alt+click"),
               ("Delete the selected box", "Delete"), ("Lay a floating paste", "Enter"),
               ("Weigh the prompt's word or selection up / down", "Ctrl+Up  Ctrl+Down"))


class ShortcutsDialog(QDialog):
    """Every menu action with its shortcuts (read from the actions, so never out of date) and the canvas keys."""

    def __init__(self, actions, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("Keyboard shortcuts")
        rows = [(a.text().replace("&", ""), ", ".join(k.toString() for k in a.shortcuts()))
                for a in actions if a.shortcuts()]
        rows += list(CANVAS_KEYS)
        self.table = QTableWidget(len(rows), 2)
        self.table.setHorizontalHeaderLabels(["Action", "Keys"])
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        for i, (name, keys) in enumerate(rows):
            self.table.setItem(i, 0, QTableWidgetItem(name))
            self.table.setItem(i, 1, QTableWidgetItem(keys))
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        lay = QVBoxLayout(self)
        lay.addWidget(self.table)
        lay.addWidget(buttons)
        self.resize(460, 560)


def about_html(folders) -> str:
    """Help > About: the installed version and the (name, folder) pairs the app uses."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("latent-canvas")
    except PackageNotFoundError:
        v = "(not installed)"
    rows = "".join(f"<tr><td>{k}</td><td><code>{f}</code></td></tr>" for k, f in folders)
    return (f"<h3>Latent Canvas {v}</h3><p>A canvas for Latent Diffusion Models (Rombach et al., CVPR 2022): text, "
            f"inpainting, layout, semantic synthesis and x4 upscaling, run on this machine.</p><table>{rows}</table>")
