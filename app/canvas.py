"""The canvas view: draws the document (image, overlays, boxes, preview) and turns mouse input into document edits."""
from __future__ import annotations

from typing import Callable

import numpy as np
from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QBrush, QColor, QCursor, QImage, QPainter, QPainterPath, QPen, QPixmap
from PySide6.QtWidgets import QWidget

from app import raster
from app.document import Document

TOOLS = ("move", "mask", "eraser", "box", "semantic", "fill", "region", "paint")
CORNERS = ("tl", "tr", "bl", "br")
HANDLE_PX = 7.0


def corners(r: QRectF) -> dict[str, QPointF]:
    return dict(zip(CORNERS, (r.topLeft(), r.topRight(), r.bottomLeft(), r.bottomRight())))


def corner_at(r: QRectF, wp: QPointF) -> str | None:
    """The corner of a widget rect whose handle is under the point, or None."""
    return next((name for name, c in corners(r).items()
                 if abs(c.x() - wp.x()) <= HANDLE_PX and abs(c.y() - wp.y()) <= HANDLE_PX), None)


def paint_handles(p: QPainter, r: QRectF, fill: QColor) -> None:
    p.setBrush(fill)
    for c in corners(r).values():
        p.drawRect(QRectF(c.x() - 4, c.y() - 4, 8, 8))


def to_qimage(a: np.ndarray) -> QImage:
    """A deep-copied QImage of an HxWx3 (RGB888) or HxWx4 (RGBA8888) uint8 array."""
    a = np.ascontiguousarray(a)
    h, w = a.shape[:2]
    fmt = QImage.Format.Format_RGB888 if a.shape[2] == 3 else QImage.Format.Format_RGBA8888
    return QImage(a.data, w, h, a.strides[0], fmt).copy()


def checker_brush(size: int = 12) -> QBrush:
    pix = QPixmap(size * 2, size * 2)
    pix.fill(QColor(90, 90, 90))
    p = QPainter(pix)
    p.fillRect(0, 0, size, size, QColor(120, 120, 120))
    p.fillRect(size, size, size, size, QColor(120, 120, 120))
    p.end()
    return QBrush(pix)


class Canvas(QWidget):
    """Zoom (wheel, fit, 100%), pan (middle button, space-drag), brush/box/fill tools; edits go to the Document."""

    toolChanged = Signal(str)
    brushChanged = Signal(float, float)
    selectionChanged = Signal(object)
    paintColourChanged = Signal(tuple)

    def __init__(self, doc: Document, parent: QWidget | None = None):
        super().__init__(parent)
        self.setMouseTracking(True)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setAcceptDrops(False)
        self.setMinimumSize(240, 200)
        self.doc: Document | None = None
        self.tool = "mask"
        self.brush_radius, self.brush_hardness = 16.0, 0.8
        self.current_label = 0
        self.paint_colour: tuple[int, int, int] = (40, 40, 40)
        self.colors = raster.palette(182)
        self.mask_opacity, self.label_opacity = 0.45, 0.55
        self.show_labels = self.show_mask = self.show_boxes = self.show_preview = True
        self.scale, self.offset = 1.0, QPointF(0, 0)
        self.preview: np.ndarray | None = None
        self.preview_region: tuple | None = None
        self.region_text = ""
        self.selected_box: int | None = None
        self.ask_box_label: Callable[[], tuple[str, str | None] | None] = lambda: ("object", None)
        self._img = self._mask = self._labels = self._preview = None
        self._floating: tuple | None = None  # (the floating picture's array, its QImage)
        self._drag: dict | None = None
        self._space = False
        self._mouse = QPointF(-1, -1)
        self._checker = checker_brush()
        self._fitted = False
        self.set_document(doc)

    # --- document --------------------------------------------------------------------------------------------
    def set_document(self, doc: Document) -> None:
        if self.doc is not None:
            self.doc.unsubscribe(self._changed)
        self.doc = doc
        doc.subscribe(self._changed)
        self.selected_box, self.preview, self._preview = None, None, None
        self._img = self._mask = self._labels = None
        self.fit()

    def _changed(self, what: str) -> None:
        if what in ("image", "size", "all"):
            self._img = None
        if what in ("mask", "size", "all"):
            self._mask = None
        if what in ("labels", "size", "all"):
            self._labels = None
        if what in ("boxes", "all") and self.selected_box is not None and self.selected_box >= len(self.doc.boxes):
            self.set_selected(None)
        if what == "size":
            self.fit()
        self.update()

    def set_paint_colour(self, rgb: tuple[int, int, int]) -> None:
        self.paint_colour = tuple(int(v) for v in rgb)
        self.paintColourChanged.emit(self.paint_colour)

    def set_tool(self, tool: str) -> None:
        if tool not in TOOLS:
            raise ValueError(tool)
        self.tool = tool
        self.setCursor(Qt.CursorShape.CrossCursor if tool != "move" else Qt.CursorShape.ArrowCursor)
        self.toolChanged.emit(tool)
        self.update()

    def set_brush(self, radius: float | None = None, hardness: float | None = None) -> None:
        if radius is not None:
            self.brush_radius = float(min(max(radius, 1.0), 512.0))
        if hardness is not None:
            self.brush_hardness = float(min(max(hardness, 0.0), 1.0))
        self.brushChanged.emit(self.brush_radius, self.brush_hardness)
        self.update()

    def set_colors(self, colors: np.ndarray) -> None:
        self.colors = colors if len(colors) else raster.palette(1)
        self._labels = None
        self.update()

    def set_selected(self, index: int | None) -> None:
        self.selected_box = index
        self.selectionChanged.emit(index)
        self.update()

    def set_preview(self, rgb: np.ndarray | None, region=None) -> None:
        """Show a preview or result over the image, or over its generation region (x, y, w, h) when given."""
        self.preview = rgb
        self.preview_region = tuple(region) if region and rgb is not None else None
        self._preview = None if rgb is None else to_qimage(rgb)
        self.update()

    # --- view transform --------------------------------------------------------------------------------------
    def image_rect(self) -> QRectF:
        return QRectF(self.offset.x(), self.offset.y(), self.doc.width * self.scale, self.doc.height * self.scale)

    def pixel_rect(self, x: float, y: float, w: float, h: float) -> QRectF:
        return QRectF(self.to_widget(x, y), self.to_widget(x + w, y + h))

    def to_image(self, p: QPointF) -> QPointF:
        return QPointF((p.x() - self.offset.x()) / self.scale, (p.y() - self.offset.y()) / self.scale)

    def to_widget(self, x: float, y: float) -> QPointF:
        return QPointF(x * self.scale + self.offset.x(), y * self.scale + self.offset.y())

    def fit(self) -> None:
        if self.doc is None:
            return
        s = min((self.width() - 24) / self.doc.width, (self.height() - 48) / self.doc.height)
        self.scale = max(s, 0.02)
        self._center()

    def actual_size(self) -> None:
        self.scale = 1.0
        self._center()

    def _center(self) -> None:
        self.offset = QPointF((self.width() - self.doc.width * self.scale) / 2, (self.height() - self.doc.height * self.scale) / 2 + 8)
        self.update()

    def zoom_by(self, factor: float, anchor: QPointF | None = None) -> None:
        anchor = anchor or QPointF(self.width() / 2, self.height() / 2)
        before = self.to_image(anchor)
        self.scale = float(min(max(self.scale * factor, 0.02), 64.0))
        self.offset = QPointF(anchor.x() - before.x() * self.scale, anchor.y() - before.y() * self.scale)
        self.update()

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        if not self._fitted or self._drag is None:
            self.fit()
            self._fitted = True

    # --- painting --------------------------------------------------------------------------------------------
    def _overlays(self) -> None:
        d = self.doc
        if self._img is None:
            self._img = to_qimage(d.image)
        if self._mask is None:
            rgba = np.zeros(d.mask.shape + (4,), np.uint8)
            rgba[..., 0], rgba[..., 1], rgba[..., 2] = 255, 40, 60
            rgba[..., 3] = (d.mask.astype(np.float32) * self.mask_opacity).astype(np.uint8)
            self._mask = to_qimage(rgba)
        if self._labels is None:
            lab = d.labels
            rgba = np.zeros(lab.shape + (4,), np.uint8)
            painted = lab >= 0
            if painted.any():
                rgba[painted, :3] = self.colors[np.minimum(lab[painted], len(self.colors) - 1)]
                rgba[painted, 3] = int(255 * self.label_opacity)
            self._labels = to_qimage(rgba)

    def paintEvent(self, event) -> None:
        p = QPainter(self)
        p.fillRect(self.rect(), self._checker)
        if self.doc is None:
            return
        self._overlays()
        r = self.image_rect()
        p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, self.scale < 1.0)
        p.drawImage(r, self._img)
        self._paint_tiles(p, r)
        if self.show_labels:
            p.drawImage(r, self._labels)
        if self._preview is not None and self.show_preview:
            p.drawImage(self.pixel_rect(*self.preview_region) if self.preview_region else r, self._preview)
        self._paint_floating(p)
        if self.show_mask:
            p.drawImage(r, self._mask)
        p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
        if self.show_boxes:
            self._paint_boxes(p)
        self._paint_region(p, r)
        pen = QPen(QColor(255, 255, 255, 180), 1, Qt.PenStyle.DashLine)
        p.setPen(pen)
        p.setBrush(Qt.BrushStyle.NoBrush)
        p.drawRect(r.adjusted(-2, -2, 2, 2))
        if self.region_text:
            p.drawText(QPointF(r.left(), r.top() - 6), self.region_text)
        if self.tool in ("mask", "eraser", "semantic", "paint") and self.rect().contains(self._mouse.toPoint()):
            p.setPen(QPen(QColor(255, 255, 255, 200), 1))
            p.drawEllipse(self._mouse, self.brush_radius * self.scale, self.brush_radius * self.scale)
        p.end()

    def _paint_tiles(self, p: QPainter, r: QRectF) -> None:
        """A seamless image: dimmed copies of it (or of its whole-canvas result preview) around it along its axes,
        so a seam would show where they meet."""
        axes = self.doc.params.seamless
        if axes == "off":
            return
        shown = self._preview if self._preview is not None and self.show_preview and not self.preview_region else None
        p.save()
        p.setOpacity(0.6)
        for dy in (-1, 0, 1) if "y" in axes else (0,):
            for dx in (-1, 0, 1) if "x" in axes else (0,):
                if dx or dy:
                    p.drawImage(r.translated(dx * r.width(), dy * r.height()), self._img if shown is None else shown)
        p.restore()

    def _floating_rect(self) -> QRectF | None:
        f = self.doc.floating
        return None if f is None else self.pixel_rect(f.x, f.y, *f.size)

    def _hit_floating(self, wp: QPointF) -> str | None:
        """'floating' inside the floating picture, 'floating-<corner>' on a corner handle (scales it), else None."""
        rect = self._floating_rect()
        if rect is None:
            return None
        corner = corner_at(rect, wp)
        return f"floating-{corner}" if corner else "floating" if rect.contains(wp) else None

    def _dragged_floating(self, d: dict, pos: QPointF) -> tuple[int, int, int, int]:
        """(x, y, w, h) of the floating picture under a drag: moved, or scaled about the opposite corner with its
        aspect ratio kept."""
        x, y, w, h = d["orig"]
        ip = self.to_image(pos)
        if d["kind"] == "floating":
            return round(x + ip.x() - d["start"].x()), round(y + ip.y() - d["start"].y()), w, h
        corner = d["kind"][len("floating-"):]
        ax, ay = x + w * (corner[1] == "l"), y + h * (corner[0] == "t")  # the opposite corner stays
        s = max(abs(ip.x() - ax) / w, abs(ip.y() - ay) / h, 4 / min(w, h))
        nw, nh = round(w * s), round(h * s)
        return (ax - nw if corner[1] == "l" else ax), (ay - nh if corner[0] == "t" else ay), nw, nh

    def _paint_floating(self, p: QPainter) -> None:
        """The floating paste over everything but the mask and boxes: a dashed frame to drag it by, corners to scale
        it."""
        rect = self._floating_rect()
        if rect is None:
            return
        rgb = self.doc.floating.rgb
        if self._floating is None or self._floating[0] is not rgb:
            self._floating = (rgb, to_qimage(rgb))
        p.drawImage(rect, self._floating[1])
        p.setPen(QPen(QColor(255, 220, 0), 1, Qt.PenStyle.DashLine))
        p.setBrush(Qt.BrushStyle.NoBrush)
        p.drawRect(rect)
        p.setPen(QPen(QColor(255, 220, 0), 1))
        paint_handles(p, rect, QColor(255, 255, 255))

    def shown_region(self) -> tuple | None:
        if self._drag and "region" in self._drag:
            return self._drag["region"]
        return self.doc.region

    def _paint_region(self, p: QPainter, image: QRectF) -> None:
        """The generation region: outside it dimmed, its border dashed, its size written above it."""
        region = self.shown_region()
        if region is None:
            return
        wr = self.pixel_rect(*region).normalized()
        p.save()
        p.setClipRect(image)
        outside = QPainterPath()
        outside.addRect(image)
        inner = QPainterPath()
        inner.addRect(wr)
        p.fillPath(outside.subtracted(inner), QColor(0, 0, 0, 90))
        p.restore()
        p.setPen(QPen(QColor(255, 170, 0), 2, Qt.PenStyle.DashLine))
        p.setBrush(Qt.BrushStyle.NoBrush)
        p.drawRect(wr)
        p.drawText(QPointF(wr.left() + 4, wr.bottom() - 6), f"region {round(abs(region[2]))}×{round(abs(region[3]))}")
        if self.tool == "region":
            paint_handles(p, wr, QColor(255, 170, 0))

    def _box_widget_rect(self, rect) -> QRectF:
        x0, y0, x1, y1 = rect
        a, b = self.to_widget(x0 * self.doc.width, y0 * self.doc.height), self.to_widget(x1 * self.doc.width, y1 * self.doc.height)
        return QRectF(a, b)

    def _paint_boxes(self, p: QPainter) -> None:
        names = {}
        for i, box in enumerate(self.doc.boxes):
            rect = box.rect
            if self._drag and self._drag.get("box") == i and "rect" in self._drag:
                rect = self._drag["rect"]
            colour = QColor(*[int(c) for c in self.colors[names.setdefault(box.label, len(names) * 7 % len(self.colors))]])
            wr = self._box_widget_rect(rect)
            selected = i == self.selected_box
            p.setPen(QPen(colour, 3 if selected else 2))
            p.setBrush(QColor(colour.red(), colour.green(), colour.blue(), 40))
            p.drawRect(wr)
            text = box.label + (f": {box.prompt}" if box.prompt else "")
            tw = p.fontMetrics().horizontalAdvance(text) + 8
            p.fillRect(QRectF(wr.left(), wr.top() - 18, tw, 18), colour)
            p.setPen(QColor(0, 0, 0))
            p.drawText(QRectF(wr.left() + 4, wr.top() - 18, tw, 18), Qt.AlignmentFlag.AlignVCenter, text)
            if selected:
                paint_handles(p, wr, QColor(255, 255, 255))
        if self._drag and self._drag.get("kind") == "new":
            p.setPen(QPen(QColor(255, 255, 0), 1, Qt.PenStyle.DashLine))
            p.setBrush(Qt.BrushStyle.NoBrush)
            p.drawRect(QRectF(self._drag["start"], self._drag["now"]).normalized())

    # --- input -----------------------------------------------------------------------------------------------
    def _norm(self, wp: QPointF) -> tuple[float, float]:
        ip = self.to_image(wp)
        return ip.x() / self.doc.width, ip.y() / self.doc.height

    def _hit_box(self, wp: QPointF) -> tuple[int, str] | None:
        """(box index, 'move' or a corner name) under a widget point; the selected box's handles win."""
        order = ([self.selected_box] if self.selected_box is not None else []) + list(reversed(range(len(self.doc.boxes))))
        for i in order:
            corner = corner_at(self._box_widget_rect(self.doc.boxes[i].rect), wp)
            if corner:
                return i, corner
        i = self.doc.box_at(*self._norm(wp))
        return (i, "move") if i is not None else None

    def mousePressEvent(self, e) -> None:
        pos = e.position()
        self._mouse = pos
        if e.button() == Qt.MouseButton.MiddleButton or (e.button() == Qt.MouseButton.LeftButton and self._space):
            self._drag = dict(kind="pan", last=pos)
            self.setCursor(Qt.CursorShape.ClosedHandCursor)
            return
        if e.button() != Qt.MouseButton.LeftButton:
            return
        ip = self.to_image(pos)
        hit = self._hit_floating(pos)
        if hit is not None:
            f = self.doc.floating
            self._drag = dict(kind=hit, start=ip, orig=(f.x, f.y, *f.size))
            return
        if self.tool == "paint" and e.modifiers() & Qt.KeyboardModifier.AltModifier:
            x, y = int(ip.x()), int(ip.y())
            if 0 <= x < self.doc.width and 0 <= y < self.doc.height:
                self.set_paint_colour(self.doc.image[y, x])
        elif self.tool in ("mask", "eraser", "semantic", "paint"):
            layer = {"semantic": "labels", "paint": "image"}.get(self.tool, "mask")
            value = {"semantic": self.current_label, "paint": self.paint_colour, "eraser": 0}.get(self.tool, 255)
            if self.tool == "semantic" and e.modifiers() & Qt.KeyboardModifier.AltModifier:
                value = -1
            self.doc.begin_stroke(layer, value, self.brush_radius, self.brush_hardness)
            self.doc.stroke_to(ip.x(), ip.y())
            self._drag = dict(kind="stroke")
        elif self.tool == "fill":
            self.doc.fill("labels", (ip.x(), ip.y()), self.current_label)
        elif self.tool == "region":
            self._drag = dict(kind=self._hit_region(pos), start=pos, orig=self.doc.generation_rect())
        elif self.tool in ("box", "move"):
            hit = self._hit_box(pos)
            if hit is not None:
                self.set_selected(hit[0])
                self._drag = dict(kind=hit[1], box=hit[0], start=pos, orig=self.doc.boxes[hit[0]].rect)
            elif self.tool == "box":
                self.set_selected(None)
                self._drag = dict(kind="new", start=pos, now=pos)
            else:
                self.set_selected(None)

    def mouseMoveEvent(self, e) -> None:
        pos = e.position()
        self._mouse = pos
        d = self._drag
        if d is None:
            self.update()
            return
        if d["kind"] == "pan":
            self.offset += pos - d["last"]
            d["last"] = pos
        elif d["kind"] == "stroke":
            ip = self.to_image(pos)
            self.doc.stroke_to(ip.x(), ip.y())
        elif d["kind"] == "new":
            d["now"] = pos
        elif d["kind"].startswith("floating"):
            self.doc.move_floating(*self._dragged_floating(d, pos))
        elif d["kind"].startswith("region"):
            d["region"] = self._dragged_region(d, pos)
        elif "box" in d:
            dx = (pos.x() - d["start"].x()) / self.scale / self.doc.width
            dy = (pos.y() - d["start"].y()) / self.scale / self.doc.height
            x0, y0, x1, y1 = d["orig"]
            if d["kind"] == "move":
                dx, dy = min(max(dx, -x0), 1 - x1), min(max(dy, -y0), 1 - y1)
                d["rect"] = (x0 + dx, y0 + dy, x1 + dx, y1 + dy)
            else:
                x0, x1 = (x0 + dx, x1) if d["kind"][1] == "l" else (x0, x1 + dx)
                y0, y1 = (y0 + dy, y1) if d["kind"][0] == "t" else (y0, y1 + dy)
                d["rect"] = (x0, y0, x1, y1)
        self.update()

    def mouseReleaseEvent(self, e) -> None:
        d, self._drag = self._drag, None
        if d is None:
            return
        if d["kind"] == "pan":
            self.set_tool(self.tool)
        elif d["kind"] == "stroke":
            self.doc.end_stroke()
        elif d["kind"] == "new":
            a, b = self._norm(d["start"]), self._norm(e.position())
            if abs(d["start"].x() - e.position().x()) >= 4 and abs(d["start"].y() - e.position().y()) >= 4:
                answer = self.ask_box_label()
                if answer:
                    self.set_selected(self.doc.add_box(answer[0], (a[0], a[1], b[0], b[1]), answer[1]))
        elif d["kind"].startswith("region"):
            if "region" in d and (d["kind"] != "region-new" or min(d["region"][2:]) >= 4):
                self.doc.set_region(d["region"])
        elif "rect" in d:
            self.doc.set_box(d["box"], rect=d["rect"])
        self.update()

    def _hit_region(self, wp: QPointF) -> str:
        """'region-<corner>' on a handle, 'region-move' inside the region, 'region-new' elsewhere."""
        if self.doc.region is None:
            return "region-new"
        wr = self.pixel_rect(*self.doc.region)
        corner = corner_at(wr, wp)
        return f"region-{corner}" if corner else "region-move" if wr.contains(wp) else "region-new"

    def _dragged_region(self, d: dict, pos: QPointF) -> tuple[float, float, float, float]:
        a, b = self.to_image(d["start"]), self.to_image(pos)
        dx, dy = b.x() - a.x(), b.y() - a.y()
        x, y, w, h = d["orig"]
        kind = d["kind"][len("region-"):]
        if kind == "new":
            return (min(a.x(), b.x()), min(a.y(), b.y()), abs(dx), abs(dy))
        if kind == "move":
            return (min(max(x + dx, 0), self.doc.width - w), min(max(y + dy, 0), self.doc.height - h), w, h)
        x0, x1 = (x + dx, x + w) if kind[1] == "l" else (x, x + w + dx)
        y0, y1 = (y + dy, y + h) if kind[0] == "t" else (y, y + h + dy)
        return (min(x0, x1), min(y0, y1), abs(x1 - x0), abs(y1 - y0))

    def wheelEvent(self, e) -> None:
        delta = e.angleDelta().y()
        if delta:
            self.zoom_by(1.0015 ** delta, e.position())

    def keyPressEvent(self, e) -> None:
        k, shift = e.key(), bool(e.modifiers() & Qt.KeyboardModifier.ShiftModifier)
        if k == Qt.Key.Key_Space and not e.isAutoRepeat():
            self._space = True
            self.setCursor(Qt.CursorShape.OpenHandCursor)
        elif k in (Qt.Key.Key_BracketLeft, Qt.Key.Key_BraceLeft):
            self.set_hardness_or_size(shift, -1)
        elif k in (Qt.Key.Key_BracketRight, Qt.Key.Key_BraceRight):
            self.set_hardness_or_size(shift, +1)
        elif k in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and self.doc.floating is not None:
            self.doc.anchor()
        elif k in (Qt.Key.Key_Delete, Qt.Key.Key_Backspace) and self.selected_box is not None:
            self.doc.delete_box(self.selected_box)
            self.set_selected(None)
        else:
            super().keyPressEvent(e)

    def set_hardness_or_size(self, hardness: bool, direction: int) -> None:
        if hardness:
            self.set_brush(hardness=round(self.brush_hardness + 0.1 * direction, 2))
        else:
            self.set_brush(radius=self.brush_radius * (1.25 if direction > 0 else 0.8))

    def keyReleaseEvent(self, e) -> None:
        if e.key() == Qt.Key.Key_Space and not e.isAutoRepeat():
            self._space = False
            self.set_tool(self.tool)
        else:
            super().keyReleaseEvent(e)

    def leaveEvent(self, e) -> None:
        self._mouse = QPointF(-1, -1)
        self.update()

    def cursor_image_pos(self) -> QPointF:
        return self.to_image(QPointF(self.mapFromGlobal(QCursor.pos())))
