"""Task-specific panels: upscale/refine and inpaint-mask options, and the per-region prompt table."""
from __future__ import annotations

import numpy as np
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QFrame, QHeaderView, QLabel, QSpinBox,
                               QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget)

from app.document import Document
from app.panels import _set
from engine.api import HIRES_TASKS, LARGE_CANVAS_TASKS

UPSCALERS = (("diffusion x4 (model)", "model"), ("Real-ESRGAN x4", "esrgan"))
HIRES = (("two passes when larger than the model (auto)", "auto"), ("always two passes", "on"),
         ("one pass (convolutional sampling)", "off"), ("one pass, dilated sampling", "dilated"))
ONE_PASS = ("off", "dilated")
HIRES_UPSCALERS = (("Lanczos", "lanczos"), ("x4 upscaler model", "model"))
SEAMLESS = (("off", "off"), ("both directions", "xy"), ("left to right", "x"), ("top to bottom", "y"))
DROP_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


class UpscaleDropTarget(QLabel):
    """A drop zone: an image dropped here is opened and upscaled x4 at once."""

    imageDropped = Signal(str)

    def __init__(self, parent=None):
        super().__init__("Drop an image here to upscale it ×4", parent)
        self.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.setMinimumHeight(40)
        self.setAcceptDrops(True)

    @staticmethod
    def _path(mime) -> str | None:
        for url in mime.urls():
            if url.toLocalFile().lower().endswith(DROP_SUFFIXES):
                return url.toLocalFile()
        return None

    def dragEnterEvent(self, e) -> None:
        if self._path(e.mimeData()):
            e.acceptProposedAction()

    def dropEvent(self, e) -> None:
        path = self._path(e.mimeData())
        if path:
            e.acceptProposedAction()
            self.imageDropped.emit(path)


class TaskOptionsPanel(QWidget):
    """Noise level, upscaler and upscale-then-refine for the x4 task; mask grow and feather for inpainting; planned
    tries for a layout from the prompt alone."""

    def __init__(self, doc: Document, parent=None):
        super().__init__(parent)
        self.doc = doc
        self.upscaler = QComboBox()
        for text, value in UPSCALERS:
            self.upscaler.addItem(text, value)
        self.upscale_by = QComboBox(toolTip="How much larger: x4 as the upscaler makes it, or x2 / x3 resized down "
                                            "from that (A1111's Resize)")
        for f in (4, 3, 2):
            self.upscale_by.addItem(f"x{f}", f)
        self.noise_level = QSpinBox(minimum=0, maximum=350, singleStep=5)
        self.noise_level.setToolTip("Noise added to the low-resolution input (SD x4 upscaler); 0 keeps it exact")
        self.colour_fix = QCheckBox("Colour fix")
        self.colour_fix.setToolTip("Replace the result's broad colours and shading with the input's, keeping its new "
                                   "detail (StableSR's colour fix)")
        self.hires = QComboBox()
        for text, value in HIRES:
            self.hires.addItem(text, value)
        self.hires.setToolTip("On canvases larger than the model's training size, compose at that size first, then "
                              "enlarge and repaint at full size (hires fix). Auto composes a layout or label map where "
                              "its objects come out at the size the model drew them in training: many small boxes or "
                              "blobs on a large canvas are drawn in one pass. Dilated sampling samples the full size once "
                              "while composing it on interleaved latents of the trained size")
        self.hires_strength = QDoubleSpinBox(minimum=0.0, maximum=1.0, singleStep=0.05, decimals=2)
        self.hires_strength.setSpecialValueText("off (only enlarge)")
        self.hires_strength.setToolTip("How much the full-size pass repaints the enlarged composition")
        self.hires_upscaler = QComboBox()
        for text, value in HIRES_UPSCALERS:
            self.hires_upscaler.addItem(text, value)
        self.hires_upscaler.setToolTip("How the composition is enlarged before the full-size pass: Lanczos, or the x4 "
                                       "upscaler model (adds its own detail; A1111's LDSR upscaler)")
        self.seamless = QComboBox(toolTip="A tileable image: its edges continue each other, so copies laid side by "
                                          "side (textures, patterns) show no seam (A1111's Tiling)")
        for text, value in SEAMLESS:
            self.seamless.addItem(text, value)
        self.refine_strength = QDoubleSpinBox(minimum=0.0, maximum=1.0, singleStep=0.05, decimals=2)
        self.refine_strength.setSpecialValueText("off")
        self.refine_strength.setToolTip("After enlarging, refine tile by tile with img2img at this strength")
        self.refine_model = QComboBox()
        for combo in (self.upscaler, self.refine_model, self.hires, self.hires_upscaler, self.seamless):
            combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(12)
        self.mask_grow = QSpinBox(minimum=0, maximum=256, suffix=" px")
        self.mask_feather = QSpinBox(minimum=0, maximum=256, suffix=" px")
        self.inpaint_crop = QCheckBox("Only around the mask")
        self.inpaint_crop.setToolTip("Inpaint a crop around the mask at the model's own size, then paste it back "
                                     "(full detail for small masks on large canvases)")
        self.best_of = QSpinBox(minimum=1, maximum=16)
        self.best_of.setToolTip("Layout from the prompt alone (no boxes), and text-to-image on the bundled text model "
                                "(batch size 1): draw this many, each with its own plan and seed, and keep the one "
                                "whose shapes the text model reads as the prompt's")
        self.sketch_strength = QDoubleSpinBox(minimum=0.0, maximum=1.0, singleStep=0.05, decimals=2)
        self.sketch_strength.setSpecialValueText("off (from noise)")
        self.sketch_strength.setToolTip("Layout with the bundled shapes-world models: start from a flat colour sketch "
                                        "of the ground and sky the prompt names ('on grass under the sky'), repainted "
                                        "at this strength")
        self.drop_target = UpscaleDropTarget()
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow(self.drop_target)
        form.addRow("Large canvas", self.hires)
        form.addRow("Enlarge with", self.hires_upscaler)
        form.addRow("Second pass strength", self.hires_strength)
        form.addRow("Seamless", self.seamless)
        form.addRow("Upscaler", self.upscaler)
        form.addRow("Scale", self.upscale_by)
        form.addRow("Noise level", self.noise_level)
        form.addRow("", self.colour_fix)
        form.addRow("Refine strength", self.refine_strength)
        form.addRow("Refine model", self.refine_model)
        form.addRow("Mask grow", self.mask_grow)
        form.addRow("Mask feather", self.mask_feather)
        form.addRow("", self.inpaint_crop)
        form.addRow("Tries (best of)", self.best_of)
        form.addRow("Ground sketch", self.sketch_strength)
        self.set_models(())
        self.upscaler.currentIndexChanged.connect(lambda: self.doc.set_param("upscaler", self.upscaler.currentData()))
        self.noise_level.valueChanged.connect(lambda v: self.doc.set_param("noise_level", v))
        self.upscale_by.currentIndexChanged.connect(
            lambda: self.doc.set_param("upscale_by", self.upscale_by.currentData()))
        self.colour_fix.toggled.connect(lambda v: self.doc.set_param("colour_fix", v))
        self.hires.currentIndexChanged.connect(lambda: self.doc.set_param("hires", self.hires.currentData()))
        self.hires_strength.valueChanged.connect(lambda v: self.doc.set_param("hires_strength", v))
        self.seamless.currentIndexChanged.connect(lambda: self.doc.set_param("seamless", self.seamless.currentData()))
        self.hires_upscaler.currentIndexChanged.connect(
            lambda: self.doc.set_param("hires_upscaler", self.hires_upscaler.currentData()))
        self.refine_strength.valueChanged.connect(lambda v: self.doc.set_param("refine_strength", v))
        self.refine_model.currentIndexChanged.connect(
            lambda: self.doc.set_param("refine_model", self.refine_model.currentData() or "default"))
        self.mask_grow.valueChanged.connect(lambda v: self.doc.set_param("mask_grow", v))
        self.mask_feather.valueChanged.connect(lambda v: self.doc.set_param("mask_feather", v))
        self.inpaint_crop.toggled.connect(lambda v: self.doc.set_param("inpaint_crop", v))
        self.best_of.valueChanged.connect(lambda v: self.doc.set_param("best_of", v))
        self.sketch_strength.valueChanged.connect(lambda v: self.doc.set_param("sketch_strength", v))

    def set_models(self, models) -> None:
        """Refine model choices: Automatic plus every readable model that does img2img."""
        self.refine_model.blockSignals(True)
        self.refine_model.clear()
        self.refine_model.addItem("Automatic (bundled img2img model)", "default")
        for m in models:
            if not m.error and "img2img" in m.tasks:
                self.refine_model.addItem(f"{m.name} ({m.family})", m.path)
        self.refine_model.blockSignals(False)
        self.sync(self.doc)

    def sync(self, doc: Document) -> None:
        self.doc, p = doc, doc.params
        if self.refine_model.findData(p.refine_model) < 0 and p.refine_model != "default":
            self.refine_model.addItem(p.refine_model, p.refine_model)
        for w, v in ((self.upscaler, p.upscaler), (self.upscale_by, int(p.upscale_by)),
                     (self.noise_level, int(p.noise_level)), (self.colour_fix, p.colour_fix),
                     (self.hires, p.hires), (self.hires_strength, float(p.hires_strength)),
                     (self.hires_upscaler, p.hires_upscaler), (self.seamless, p.seamless),
                     (self.refine_strength, float(p.refine_strength)), (self.refine_model, p.refine_model),
                     (self.mask_grow, int(p.mask_grow)), (self.mask_feather, int(p.mask_feather)),
                     (self.inpaint_crop, p.inpaint_crop), (self.best_of, int(p.best_of)),
                     (self.sketch_strength, float(p.sketch_strength))):
            _set(w, v)
        task = doc.task()
        for w in (self.upscaler, self.upscale_by, self.noise_level, self.refine_strength):
            w.setEnabled(task == "upscale")
        self.colour_fix.setEnabled(task == "upscale" and p.upscaler != "esrgan")
        self.hires.setEnabled(task in LARGE_CANVAS_TASKS)
        self.hires_strength.setEnabled(task in (*HIRES_TASKS, "img2img") and p.hires not in ONE_PASS)
        self.hires_upscaler.setEnabled(task in LARGE_CANVAS_TASKS and p.hires not in ONE_PASS)
        self.refine_model.setEnabled(task == "upscale" and p.refine_strength > 0)
        self.mask_grow.setEnabled(task == "inpaint")
        self.mask_feather.setEnabled(task == "inpaint")
        self.inpaint_crop.setEnabled(task == "inpaint")
        self.best_of.setEnabled(((task == "layout" and not doc.boxes) or task == "txt2img") and p.batch_size == 1)
        self.sketch_strength.setEnabled(task == "layout")


class RegionPromptsPanel(QWidget):
    """One row per painted semantic class (Request.label_prompts) and per layout box (its region prompt)."""

    def __init__(self, doc: Document, parent=None):
        super().__init__(parent)
        self.doc = doc
        self.names: tuple[str, ...] = ()
        self.rows: list[tuple[str, int]] = []
        self.table = QTableWidget(0, 2)
        self.table.setHorizontalHeaderLabels(["Region", "Prompt"])
        self.table.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.table.verticalHeader().setVisible(False)
        self.table.setMinimumHeight(90)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.table)
        self.table.itemChanged.connect(self._edited)

    def set_names(self, names) -> None:
        self.names = tuple(names)
        self.sync(self.doc, force=True)

    def _name(self, cid: int) -> str:
        return self.names[cid] if 0 <= cid < len(self.names) else f"class {cid}"

    def _content(self, doc: Document) -> list[tuple[str, int, str, str]]:
        painted = np.flatnonzero(np.bincount(doc.labels.ravel().astype(np.int64) + 1)[1:]) if doc.labels.size else []
        rows = [("class", int(c), f"{int(c)} {self._name(int(c))}", doc.params.label_prompts.get(int(c), ""))
                for c in painted]
        rows += [("box", i, f"box {i + 1}: {b.label}", b.prompt or "") for i, b in enumerate(doc.boxes)]
        return rows

    def sync(self, doc: Document, force: bool = False) -> None:
        self.doc = doc
        content = self._content(doc)
        current = [(k, i, self.table.item(r, 0).text(), self.table.item(r, 1).text())
                   for r, (k, i) in enumerate(self.rows)]
        if content == current and not force:
            return
        self.table.blockSignals(True)
        self.table.setRowCount(len(content))
        for r, (_kind, _i, title, prompt) in enumerate(content):
            head = QTableWidgetItem(title)
            head.setFlags(head.flags() & ~Qt.ItemFlag.ItemIsEditable)
            self.table.setItem(r, 0, head)
            self.table.setItem(r, 1, QTableWidgetItem(prompt))
        self.rows = [(k, i) for k, i, _, _ in content]
        self.table.blockSignals(False)

    def set_prompt(self, row: int, text: str) -> None:
        self.table.item(row, 1).setText(text)

    def _edited(self, item: QTableWidgetItem) -> None:
        if item.column() != 1 or item.row() >= len(self.rows):
            return
        kind, index = self.rows[item.row()]
        text = item.text().strip()
        if kind == "class":
            self.doc.set_label_prompt(index, text)
        else:
            self.doc.set_box(index, prompt=text or None)
