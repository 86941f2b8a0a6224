"""The ControlNet panel: which ControlNet, its guide image (the canvas as it is now, or a file), how the guide is
read, its strength and the part of the denoising it acts in."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtGui import QImage, QPixmap
from PySide6.QtWidgets import (QComboBox, QDoubleSpinBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel, QMessageBox,
                               QPushButton, QWidget)

from app.document import Document
from app.panels import _set, fill_names
from engine import api

READINGS = (("edges of a picture (canny)", "canny"), ("scribble: dark strokes on light", "scribble"),
            ("lineart: dark lines, inverted", "invert"), ("as it is (a ready guide)", "none"))
THUMB = 72


class ControlPanel(QWidget):
    """A ControlNet unit (A1111's ControlNet unit, Krita AI's control layer) edited through the document."""

    def __init__(self, doc: Document, model_dirs: tuple[str, ...] = (), parent=None):
        super().__init__(parent)
        self.doc, self.model_dirs, self.folder = doc, tuple(model_dirs), ""
        self.model = QComboBox(toolTip="A ControlNet made for the chosen model (a controlnet folder beside the "
                                       "models, or in Latent Canvas's models folder)")
        self.reading = QComboBox(toolTip="How the guide image is turned into what the ControlNet reads")
        for text, value in READINGS:
            self.reading.addItem(text, value)
        self.strength = QDoubleSpinBox(minimum=0.0, maximum=2.0, singleStep=0.05, decimals=2)
        self.start = QDoubleSpinBox(minimum=0.0, maximum=0.95, singleStep=0.05, decimals=2)
        self.end = QDoubleSpinBox(minimum=0.05, maximum=1.0, singleStep=0.05, decimals=2)
        self.start.setToolTip("Acts from this share of the way from noise to the image...")
        self.end.setToolTip("...to this one (ending early leaves the fine detail free)")
        self.thumb = QLabel("no guide", alignment=Qt.AlignmentFlag.AlignCenter)
        self.thumb.setFixedSize(THUMB, THUMB)
        self.thumb.setStyleSheet("border: 1px solid gray")
        self.from_canvas = QPushButton("From canvas", toolTip="Use the canvas as it is now as the guide")
        self.open_button = QPushButton("Open…", toolTip="Use an image file as the guide")
        self.clear_button = QPushButton("Clear")
        buttons = QHBoxLayout()
        for b in (self.from_canvas, self.open_button, self.clear_button):
            buttons.addWidget(b)
        window = QHBoxLayout()
        window.addWidget(self.start)
        window.addWidget(QLabel("to"))
        window.addWidget(self.end)
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("ControlNet", self.model)
        form.addRow("Guide", self.thumb)
        form.addRow(buttons)
        form.addRow("Read as", self.reading)
        form.addRow("Strength", self.strength)
        form.addRow("Acts", window)
        self.model.currentIndexChanged.connect(lambda: self.doc.set_param("control_model", self.model.currentData()))
        self.reading.currentIndexChanged.connect(
            lambda: self.doc.set_param("control_preprocessor", self.reading.currentData()))
        self.strength.valueChanged.connect(lambda v: self.doc.set_param("control_strength", v))
        self.start.valueChanged.connect(lambda v: self.doc.set_param("control_start", v))
        self.end.valueChanged.connect(lambda v: self.doc.set_param("control_end", v))
        self.from_canvas.clicked.connect(lambda: self.doc.set_control_image(self.doc.flattened(), "guide from canvas"))
        self.open_button.clicked.connect(self.open_dialog)
        self.clear_button.clicked.connect(lambda: self.doc.set_control_image(None, "clear guide"))
        self.list_controlnets()

    def list_controlnets(self, model_path: str = "") -> None:
        """The ControlNets found for the model in `model_path` (its folder's controlnet folders, and the usual ones)."""
        self.folder = str(Path(model_path).parent) if model_path and model_path != "default" else ""
        names = list(api.list_assets("controlnet", tuple(d for d in (self.folder, *self.model_dirs) if d)))
        fill_names(self.model, "Off", names, self.doc.params.control_model)

    def open_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Guide image", "", "Images (*.png *.jpg *.jpeg *.webp *.bmp)")
        if path:
            self.open_guide(path)

    def open_guide(self, path: str) -> bool:
        """An image file as the guide (kept at most 4096 px a side); an unreadable one is reported, nothing lost."""
        from PIL import Image

        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                im.thumbnail((4096, 4096))
                rgb = np.asarray(im)
        except (OSError, ValueError) as e:
            QMessageBox.warning(self, "Guide image", f"Cannot open {Path(path).name}: {e}")
            return False
        self.doc.set_control_image(rgb, f"guide {Path(path).name}")
        return True

    def sync(self, doc: Document) -> None:
        self.doc, p = doc, doc.params
        if self.model.findData(p.control_model) < 0:
            fill_names(self.model, "Off", [self.model.itemData(i) for i in range(1, self.model.count())],
                       p.control_model)
        for w, v in ((self.model, p.control_model), (self.reading, p.control_preprocessor),
                     (self.strength, float(p.control_strength)), (self.start, float(p.control_start)),
                     (self.end, float(p.control_end))):
            _set(w, v)
        on = bool(p.control_model)
        for w in (self.reading, self.strength, self.start, self.end):
            w.setEnabled(on)
        self.clear_button.setEnabled(doc.control_image is not None)
        self.show_guide(doc.control_image)

    def show_guide(self, rgb: np.ndarray | None) -> None:
        if rgb is None:
            self.thumb.setPixmap(QPixmap())
            self.thumb.setText("no guide")
            return
        a = np.ascontiguousarray(rgb[..., :3])
        img = QImage(a.data, a.shape[1], a.shape[0], a.strides[0], QImage.Format.Format_RGB888).copy()
        self.thumb.setPixmap(QPixmap.fromImage(img).scaled(THUMB - 2, THUMB - 2, Qt.AspectRatioMode.KeepAspectRatio,
                                                           Qt.TransformationMode.SmoothTransformation))
