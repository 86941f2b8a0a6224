"""Side panels (views over Document.params and history): model, sampling, palette, history, progress (the prompt
boxes are app.prompt_panel)."""
from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np
from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QColor, QIcon, QPixmap
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel,
                               QLineEdit, QListWidget, QListWidgetItem, QMenu, QPlainTextEdit, QProgressBar,
                               QPushButton, QSpinBox, QVBoxLayout, QWidget)

from app import raster
from app.canvas import to_qimage
from app.document import SEED_MODES, Document
from engine import api


def fill_names(combo: QComboBox, none_text: str, names: list[str], chosen: str) -> None:
    """A combo of "none" ("" as its data) and names, with `chosen` shown as chosen (added when it is not listed),
    filled without emitting its change signals."""
    combo.blockSignals(True)
    combo.clear()
    combo.addItem(none_text, "")
    for name in names + ([chosen] if chosen and chosen not in names else []):
        combo.addItem(name, name)
    combo.setCurrentIndex(max(0, combo.findData(chosen)))
    combo.blockSignals(False)


def _set(widget, value) -> None:
    widget.blockSignals(True)
    try:
        if isinstance(widget, QPlainTextEdit):
            if widget.toPlainText() != value:
                widget.setPlainText(value)
        elif isinstance(widget, QComboBox):
            i = widget.findData(value)
            widget.setCurrentIndex(i if i >= 0 else widget.findText(str(value)))
        elif isinstance(widget, QCheckBox):
            widget.setChecked(bool(value))
        else:
            widget.setValue(value)
    finally:
        widget.blockSignals(False)


def install_model(src: str, dest_dir: str, link: bool = True) -> Path:
    """Symlink (or copy, if linking fails or is not wanted) a checkpoint into the user models folder."""
    dest = Path(dest_dir) / Path(src).name
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists() or dest.is_symlink():
        raise FileExistsError(f"{dest.name} is already in {dest.parent}")
    if link:
        try:
            os.symlink(os.path.abspath(src), dest)
            return dest
        except OSError:
            pass
    shutil.copy2(src, dest)
    return dest


class ModelPanel(QWidget):
    """Model chooser over engine.api.list_models(); shows the detected family, tasks and errors."""

    modelChanged = Signal(object)  # api.ModelInfo | None
    modelsListed = Signal(list)  # [api.ModelInfo]
    loraAdded = Signal(str)  # a LoRA file given to Add model...: the prompt panel installs it

    def __init__(self, doc: Document, extra_dirs: tuple[str, ...] = (), parent=None):
        super().__init__(parent)
        self.doc, self.extra_dirs = doc, extra_dirs
        self.models: list[api.ModelInfo] = []
        self._shown_task = ""
        self.shown: api.ModelInfo | None = None  # what the info line names: the chosen model, or Automatic's
        self.combo = QComboBox()
        self.combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.combo.setMinimumContentsLength(16)
        self.add_button = QPushButton("Add model...")
        self.vae = QComboBox(toolTip="Another autoencoder for the model, from a vae folder (A1111's SD VAE), such as "
                                     "Stable Diffusion's ft-MSE VAE for sharper faces and text")
        self.vae.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.vae.setMinimumContentsLength(16)
        self.info = QLabel()
        self.info.setWordWrap(True)
        row = QHBoxLayout()
        row.addWidget(self.combo, 1)
        row.addWidget(self.add_button)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(row)
        vae_row = QHBoxLayout()
        vae_row.addWidget(QLabel("VAE"))
        vae_row.addWidget(self.vae, 1)
        lay.addLayout(vae_row)
        lay.addWidget(self.info)
        self.combo.currentIndexChanged.connect(self._chosen)
        self.vae.currentIndexChanged.connect(lambda: self.doc.set_param("vae", self.vae.currentData() or ""))
        self.add_button.clicked.connect(self.add_model_dialog)

    def refresh(self) -> None:
        try:
            self.models = list(api.list_models(tuple(self.extra_dirs)))
            error = ""
        except Exception as e:  # the engine side may be missing or broken; the app still runs
            self.models, error = [], f"Cannot list models: {api.describe_exception(e)}"
        self.combo.blockSignals(True)
        self.combo.clear()
        self.combo.addItem("Automatic (bundled model for the task)", "default")
        for m in self.models:
            self.combo.addItem(f"{m.name} ({m.family or 'unknown'})" if not m.error else f"{m.name} (unreadable)", m.path)
        self.combo.blockSignals(False)
        self.sync(self.doc)
        if error:
            self.info.setText(error)
        self.modelsListed.emit(self.models)

    def current(self) -> api.ModelInfo | None:
        """The chosen model; for Automatic, the bundled model of the current task (semantic for the palette)."""
        path = self.combo.currentData()
        if path == "default":
            task = self.doc.task()
            return api.default_model_for(task) or api.default_model_for("semantic")
        return next((m for m in self.models if m.path == path), None)

    def _chosen(self, _i: int) -> None:
        self.doc.set_param("model", self.combo.currentData() or "default")
        self._show(self.current())

    def follow_task(self) -> None:
        """Automatic means the bundled model of the document's task: name the new one when the task changes."""
        if self.combo.currentData() == "default" and self.doc.task() != self._shown_task:
            self._show(self.current(), emit=False)

    def _show(self, m: api.ModelInfo | None, emit: bool = True) -> None:
        self._shown_task, self.shown = self.doc.task(), m
        if m is None:
            self.info.setText("No model found: add a checkpoint (.safetensors/.ckpt).")
        elif self.combo.currentData() == "default":
            self.info.setText(f"Automatic: {m.name} · {m.family} · {', '.join(m.tasks)}")
        elif m.error:
            self.info.setText(f"<span style='color:#e66'>{m.error}</span>")
        else:
            self.info.setText(f"{m.family} · {', '.join(m.tasks) or 'no tasks'} · {m.image_size or '?'} px")
        self._fill_vae(m)
        if emit:
            self.modelChanged.emit(m)

    def _fill_vae(self, m: api.ModelInfo | None) -> None:
        """The model's own autoencoder, then the VAE files the engine finds for it (and the one the document names)."""
        names = list(api.list_assets("vae", (str(Path(m.path).parent),) if m is not None and m.path else ()))
        fill_names(self.vae, "The model's own", names, self.doc.params.vae)
        self.vae.setEnabled(self.vae.count() > 1)

    def sync(self, doc: Document) -> None:
        self.doc = doc
        i = self.combo.findData(doc.params.model)
        if i < 0 and self.combo.count():
            i = 0
            doc.params.model = self.combo.itemData(0)
        _set(self.combo, self.combo.itemData(i) if i >= 0 else None)
        self._show(self.current())

    def add_model_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Add model", "", "Checkpoints (*.safetensors *.ckpt)")
        if path:
            self.add_model(path)

    def add_model(self, path: str) -> api.ModelInfo | None:
        info = api.inspect_model(path)
        if info.error and api.LORA_NOTE in info.error:
            self.loraAdded.emit(path)
            return None
        if info.error:
            self.info.setText(f"<span style='color:#e66'>{Path(path).name}: {info.error}</span>")
            return info
        try:
            dest = install_model(path, api.user_models_dir())
        except OSError as e:
            self.info.setText(f"<span style='color:#e66'>{Path(path).name}: {e}</span>")
            return None
        self.refresh()
        i = self.combo.findData(str(dest))
        if i >= 0:
            self.combo.setCurrentIndex(i)
        return info


TASK_TIPS = {
    "txt2img": "Image from the prompt alone (with the bundled text model, best of the Tries by its own reading)",
    "img2img": "Repaint the canvas under the prompt at the chosen strength",
    "inpaint": "Repaint the masked pixels only; every other pixel stays exactly as it was",
    "layout": "Objects in the boxes drawn on the canvas; with no boxes, the planner places the prompt's objects "
              "first (with the bundled models, better than txt2img for two or three objects: caption match 0.83 "
              "against 0.48)",
    "semantic": "Image from the label map painted with the class palette",
    "upscale": "x4 super-resolution of the canvas",
}
STRENGTH_TIPS = {
    "img2img": "How far the canvas is repainted: 0 keeps it, 1 starts from noise",
    "inpaint": "1 fills the mask from noise (remove, replace, outpaint); lower repaints what is under the mask, "
               "keeping its layout and colours (refine a region)",
}


class ParamsPanel(QWidget):
    """Task (inferred, overridable), sampler, steps, guidance, seed, size, strength, batch, x4 upscale."""

    def __init__(self, doc: Document, parent=None):
        super().__init__(parent)
        self.doc = doc
        self.task = QComboBox()
        self.task.addItem("auto", None)
        self.task.setItemData(0, "Inferred from the canvas: a mask inpaints, boxes lay out, a painted label map "
                                 "synthesizes, an image with x4 upscale ticked upscales, anything else is txt2img",
                              Qt.ItemDataRole.ToolTipRole)
        for t in api.TASKS:
            self.task.addItem(t, t)
            self.task.setItemData(self.task.count() - 1, TASK_TIPS[t], Qt.ItemDataRole.ToolTipRole)
        self.sampler = QComboBox()
        for s in api.SAMPLERS:
            self.sampler.addItem(s, s)
        self.steps = QSpinBox(minimum=1, maximum=1000)
        self.cfg = QDoubleSpinBox(minimum=0.0, maximum=30.0, singleStep=0.5, decimals=1)
        self.clip_skip = QSpinBox(minimum=1, maximum=12, prefix="CLIP skip ", toolTip=(
            "Stable Diffusion's text encoder: read its n-th last layer (A1111's Clip skip; 2 for many anime models, "
            "1 as the model was trained). Other models ignore it."))
        self.seed = QSpinBox(minimum=0, maximum=2**31 - 1)
        self.seed_mode = QComboBox()
        for m in SEED_MODES:
            self.seed_mode.addItem(m, m)
        self.variation = QDoubleSpinBox(minimum=0.0, maximum=1.0, singleStep=0.05, decimals=2, specialValueText="off",
                                        toolTip="A1111's variation seed: the seed's noise mixed this far towards the "
                                                "variation seed's, for pictures close to the seed's")
        self.variation_seed = QSpinBox(minimum=0, maximum=2**31 - 1, prefix="seed ")
        self.width_ = QSpinBox(minimum=32, maximum=8192, singleStep=32)
        self.height_ = QSpinBox(minimum=32, maximum=8192, singleStep=32)
        self.strength = QDoubleSpinBox(minimum=0.0, maximum=1.0, singleStep=0.05, decimals=2)
        self.batch = QSpinBox(minimum=1, maximum=16)
        self.upscale = QCheckBox("x4 upscale the image")
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("Task", self.task)
        form.addRow("Sampler", self.sampler)
        form.addRow("Steps", self.steps)
        guide_row = QHBoxLayout()
        guide_row.addWidget(self.cfg, 1)
        guide_row.addWidget(self.clip_skip)
        form.addRow("Guidance", guide_row)
        seed_row = QHBoxLayout()
        seed_row.addWidget(self.seed, 1)
        seed_row.addWidget(self.seed_mode)
        form.addRow("Seed", seed_row)
        variation_row = QHBoxLayout()
        variation_row.addWidget(self.variation)
        variation_row.addWidget(self.variation_seed, 1)
        form.addRow("Variation", variation_row)
        size_row = QHBoxLayout()
        size_row.addWidget(self.width_)
        size_row.addWidget(QLabel("×"))
        size_row.addWidget(self.height_)
        form.addRow("Size", size_row)
        form.addRow("Strength", self.strength)
        form.addRow("Batch", self.batch)
        form.addRow("", self.upscale)
        self.task.currentIndexChanged.connect(lambda: self.doc.set_task_override(self.task.currentData()))
        self.sampler.currentIndexChanged.connect(lambda: self.doc.set_param("sampler", self.sampler.currentData()))
        self.steps.valueChanged.connect(lambda v: self.doc.set_param("steps", v))
        self.cfg.valueChanged.connect(lambda v: self.doc.set_param("cfg_scale", v))
        self.clip_skip.valueChanged.connect(lambda v: self.doc.set_param("clip_skip", v))
        self.seed.valueChanged.connect(lambda v: self.doc.set_param("seed", v))
        self.variation.valueChanged.connect(lambda v: self.doc.set_param("variation_strength", v))
        self.variation_seed.valueChanged.connect(lambda v: self.doc.set_param("variation_seed", v))
        self.seed_mode.currentIndexChanged.connect(lambda: self.doc.set_param("seed_mode", self.seed_mode.currentData()))
        self.strength.valueChanged.connect(lambda v: self.doc.set_param(self._strength_param(), v))
        self.batch.valueChanged.connect(lambda v: self.doc.set_param("batch_size", v))
        self.upscale.toggled.connect(lambda v: self.doc.set_param("upscale", v))
        self.width_.editingFinished.connect(self._resize)
        self.height_.editingFinished.connect(self._resize)

    def _resize(self) -> None:
        self.doc.resize(self.width_.value(), self.height_.value())

    def _strength_param(self) -> str:
        """Img2img's strength, or inpainting's own (1: fill from noise), which the same box shows for that task."""
        return "inpaint_strength" if self.doc.task() == "inpaint" else "strength"

    def sync(self, doc: Document) -> None:
        self.doc, p = doc, doc.params
        self.task.setItemText(0, f"auto ({doc.inferred_task()})")
        for w, v in ((self.task, doc.task_override), (self.sampler, p.sampler), (self.steps, p.steps),
                     (self.cfg, p.cfg_scale), (self.clip_skip, p.clip_skip), (self.seed, int(p.seed) % 2**31),
                     (self.seed_mode, p.seed_mode), (self.variation, float(p.variation_strength)),
                     (self.variation_seed, int(p.variation_seed) % 2**31),
                     (self.width_, doc.width), (self.height_, doc.height),
                     (self.strength, getattr(p, self._strength_param())),
                     (self.batch, p.batch_size), (self.upscale, p.upscale)):
            _set(w, v)
        self.strength.setEnabled(doc.task() in ("img2img", "inpaint"))
        self.variation_seed.setEnabled(p.variation_strength > 0)
        self.strength.setToolTip(STRENGTH_TIPS.get(doc.task(), ""))


class PalettePanel(QWidget):
    """Searchable class list (ModelInfo.label_names) with palette colours; picking one sets the brush label."""

    labelChosen = Signal(int)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.search = QLineEdit(placeholderText="Search classes")
        self.list = QListWidget()
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.search)
        lay.addWidget(self.list)
        self.search.textChanged.connect(self._filter)
        self.list.currentItemChanged.connect(lambda item, _: item is not None and self.labelChosen.emit(item.data(Qt.ItemDataRole.UserRole)))
        self.names: tuple[str, ...] = ()
        self.colors = raster.palette(0)
        self.set_names(())

    def set_names(self, names, colors=()) -> None:
        """The model's classes; its own colours when it names them (ModelInfo.label_colors), else a generated set."""
        self.names = tuple(names) or tuple(f"class {i}" for i in range(182))
        given = np.asarray(colors, np.uint8).reshape(-1, 3)
        self.colors = given if len(given) == len(self.names) else raster.palette(len(self.names))
        self.list.clear()
        for i, name in enumerate(self.names):
            pix = QPixmap(14, 14)
            pix.fill(QColor(*[int(c) for c in self.colors[i]]))
            item = QListWidgetItem(QIcon(pix), f"{i:3d}  {name}")
            item.setData(Qt.ItemDataRole.UserRole, i)
            self.list.addItem(item)
        self._filter(self.search.text())

    def _filter(self, text: str) -> None:
        t = text.strip().lower()
        for row in range(self.list.count()):
            item = self.list.item(row)
            item.setHidden(bool(t) and t not in item.text().lower())

    def select(self, index: int) -> None:
        if 0 <= index < self.list.count():
            self.list.setCurrentRow(index)


def thumbnail(rgb: np.ndarray, size: int = 96) -> QIcon:
    h, w = rgb.shape[:2]
    s = max(h, w) / size
    small = raster.resize_nearest(rgb, max(int(w / s), 1), max(int(h / s), 1)) if s > 1 else rgb
    return QIcon(QPixmap.fromImage(to_qimage(small)))


class HistoryStrip(QWidget):
    """Thumbnails of finished results with Apply, Discard and Copy parameters; a thumbnail's context menu also copies
    the image or upscales it x4."""

    applyRequested = Signal(int, int)  # entry, image
    discardRequested = Signal(int)
    copyRequested = Signal(int)
    copyImageRequested = Signal(int, int)
    upscaleRequested = Signal(int, int)
    variationsRequested = Signal(int, int)
    shown = Signal(int, int)

    def __init__(self, parent=None):
        super().__init__(parent)
        self.list = QListWidget()
        self.list.setViewMode(QListWidget.ViewMode.IconMode)
        self.list.setFlow(QListWidget.Flow.LeftToRight)
        self.list.setWrapping(False)
        self.list.setIconSize(QSize(80, 80))
        self.list.setFixedHeight(112)
        self.apply_button, self.discard_button, self.copy_button = (QPushButton(t) for t in ("Apply", "Discard", "Copy parameters"))
        buttons = QVBoxLayout()
        for b in (self.apply_button, self.discard_button, self.copy_button):
            buttons.addWidget(b)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.list, 1)
        lay.addLayout(buttons)
        self.apply_button.clicked.connect(lambda: self._emit(self.applyRequested, True))
        self.discard_button.clicked.connect(lambda: self._emit(self.discardRequested))
        self.copy_button.clicked.connect(lambda: self._emit(self.copyRequested))
        self.list.currentItemChanged.connect(lambda item, _: item is not None and self.shown.emit(*item.data(Qt.ItemDataRole.UserRole)))
        self.list.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.list.customContextMenuRequested.connect(self._show_menu)

    def context_menu(self, item: QListWidgetItem) -> QMenu:
        """What can be done with one result: apply, copy, upscale, vary, copy its parameters, discard."""
        entry, image = item.data(Qt.ItemDataRole.UserRole)
        menu = QMenu(self)
        menu.addAction("Apply to canvas", lambda: self.applyRequested.emit(entry, image))
        menu.addAction("Copy image", lambda: self.copyImageRequested.emit(entry, image))
        menu.addAction("Upscale x4", lambda: self.upscaleRequested.emit(entry, image))
        menu.addAction("Variations", lambda: self.variationsRequested.emit(entry, image))
        menu.addAction("Copy parameters", lambda: self.copyRequested.emit(entry))
        menu.addSeparator()
        menu.addAction("Discard", lambda: self.discardRequested.emit(entry))
        return menu

    def _show_menu(self, pos) -> None:
        item = self.list.itemAt(pos)
        if item is not None:
            self.list.setCurrentItem(item)
            self.context_menu(item).exec(self.list.viewport().mapToGlobal(pos))

    def _emit(self, signal, with_image: bool = False) -> None:
        item = self.list.currentItem()
        if item is not None:
            entry, image = item.data(Qt.ItemDataRole.UserRole)
            signal.emit(entry, image) if with_image else signal.emit(entry)

    def sync(self, doc: Document) -> None:
        self.list.blockSignals(True)
        self.list.clear()
        for i, entry in enumerate(doc.history):
            for j, img in enumerate(entry.images):
                item = QListWidgetItem(thumbnail(img), "")
                item.setToolTip(entry.parameters)
                item.setData(Qt.ItemDataRole.UserRole, (i, j))
                self.list.addItem(item)
        self.list.blockSignals(False)
        for b in (self.apply_button, self.discard_button, self.copy_button):
            b.setEnabled(bool(doc.history))

    def select_last(self) -> None:
        if self.list.count():
            self.list.setCurrentRow(self.list.count() - 1)


class GenerateBar(QWidget):
    """Generate (Ctrl+Enter; while a job runs it queues another) and Cancel (Esc) buttons and a progress bar with the
    step count, the time left and how many generations wait."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.generate_button = QPushButton("Generate")
        self.cancel_button = QPushButton("Cancel")
        self.generate_button.setToolTip("Ctrl+Enter; while a job runs, queues another with the canvas as it is now")
        self.queued = 0
        self.cancel_button.setToolTip("Esc")
        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        self.set_busy(False)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.generate_button)
        lay.addWidget(self.cancel_button)
        lay.addWidget(self.progress, 1)

    def set_busy(self, busy: bool) -> None:
        self.cancel_button.setEnabled(busy)
        if busy:
            self.progress.setRange(0, 0)
            self.progress.setFormat("starting...")
        else:
            self.progress.setRange(0, 100)

    def show_progress(self, step: int, total: int, eta_s: float) -> None:
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(step)
        left = "" if not math.isfinite(eta_s) else f" · {eta_s:.0f} s left" if eta_s < 120 else f" · {eta_s / 60:.1f} min left"
        waiting = f" · {self.queued} queued" if self.queued else ""
        self.progress.setFormat(f"step {step}/{total}{left}{waiting}")

    def finish(self, text: str) -> None:
        self.set_busy(False)
        self.progress.setValue(self.progress.maximum() if text == "done" else 0)
        self.progress.setFormat(text)
