"""File actions of the main window: new, open, save, export, image loading, drops and PNG parameters."""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import numpy as np
from PIL import Image
from PySide6.QtCore import QUrl
from PySide6.QtGui import QDesktopServices, QGuiApplication, QImage
from PySide6.QtWidgets import QFileDialog, QMessageBox

from app import project
from app.canvas import to_qimage
from app.dialogs import guarded
from app.document import Document, Params
from app.parameters import format_parameters, parse_parameters, read_png_parameters, write_png
from app.settings import RECENT, save_settings
from engine import api

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
PARAM_NAMES = {f.name for f in fields(Params)} - {"model"}


def from_qimage(qimage: QImage) -> Image.Image:
    """A QImage of any format as an RGBA PIL image (the clipboard's and drags' pictures)."""
    q = qimage.convertToFormat(QImage.Format.Format_RGBA8888)
    w, h = q.width(), q.height()
    rows = np.frombuffer(q.constBits(), np.uint8, q.bytesPerLine() * h).reshape(h, q.bytesPerLine())
    return Image.fromarray(rows[:, : 4 * w].reshape(h, w, 4).copy(), "RGBA")


def mime_picture(mime) -> Image.Image | None:
    """The picture in mime data (copied or dragged pixels), or None."""
    qimage = QImage(mime.imageData()) if mime is not None and mime.hasImage() else QImage()
    return None if qimage.isNull() else from_qimage(qimage)


class FileActions:
    """Mixin for MainWindow (needs doc, canvas, settings, set_document, ask, statusBar, _sync_all, _update_title)."""

    def confirm_discard(self) -> bool:
        """Unsaved-changes prompt: True when it is fine to drop the current document."""
        if not self.doc.dirty:
            return True
        answer = QMessageBox.question(self, "Unsaved changes", "Save changes to the current canvas?",
                                      QMessageBox.StandardButton.Save | QMessageBox.StandardButton.Discard
                                      | QMessageBox.StandardButton.Cancel)
        if answer == QMessageBox.StandardButton.Save:
            return self.save()
        return answer == QMessageBox.StandardButton.Discard

    @guarded
    def new_document(self, *_):
        if self.confirm_discard():
            self.set_document(Document(self.doc.width, self.doc.height))

    @guarded
    def open_dialog(self, *_):
        path, _ = QFileDialog.getOpenFileName(self, "Open", "", f"Projects and images (*{project.SUFFIX} "
                                              + " ".join(f"*{s}" for s in IMAGE_SUFFIXES) + ")")
        if path:
            self.open_path(path)

    @guarded
    def open_path(self, path: str):
        if path.lower().endswith(project.SUFFIX):
            if not self.confirm_discard():
                return
            self.set_document(project.load(path))
        else:
            self.load_image(path)
        self.remember(path)

    def remember(self, path: str) -> None:
        """A file opened or saved goes to the top of File > Open Recent (kept in the settings)."""
        path = str(Path(path).resolve())
        self.settings.recent_files = [path] + [p for p in self.settings.recent_files if p != path][:RECENT - 1]
        self.store_settings()

    def fill_recent_menu(self) -> None:
        """File > Open Recent: the files that still exist, newest first, then Clear."""
        menu = self.recent_menu
        menu.clear()
        for path in [p for p in self.settings.recent_files if Path(p).exists()]:
            menu.addAction(Path(path).name, lambda path=path: self.open_path(path)).setToolTip(path)
        menu.addSeparator()
        clear = menu.addAction("Clear the list", self.clear_recent)
        clear.setEnabled(bool(self.settings.recent_files))

    def clear_recent(self) -> None:
        self.settings.recent_files = []
        self.store_settings()

    def store_settings(self) -> None:
        """The window's settings to disk (not in tests' windows, which keep theirs in memory)."""
        if self.persist_settings:
            save_settings(self.settings)

    def save_style(self, name: str, prompt: str, negative: str) -> None:
        """A style from the prompt boxes, kept in the settings (replacing one of that name) and offered to choose."""
        self.settings.styles = [s for s in self.settings.styles if s["name"] != name] + [
            dict(name=name, prompt=prompt, negative_prompt=negative)]
        self.store_settings()
        self.prompt_panel.set_styles(self.settings.style_names())
        self.statusBar().showMessage(f"Saved the style {name}", 5000)

    def delete_style(self, name: str) -> None:
        self.settings.styles = [s for s in self.settings.styles if s["name"] != name]
        self.store_settings()
        if self.doc.params.style == name:
            self.doc.set_param("style", "")
        self.prompt_panel.set_styles(self.settings.style_names())

    @guarded
    def train_dialog(self, *_):
        """File > Train a model on a folder: one dialog per window, kept while it trains (closing it hides it)."""
        if getattr(self, "trainer", None) is None:
            from app.training import TrainDialog

            self.trainer = TrainDialog(self.settings.models_dir or api.user_models_dir(), self)
            self.trainer.trained.connect(self.model_trained)
        self.trainer.show()
        self.trainer.raise_()
        return self.trainer

    @guarded
    def merge_dialog(self, *_):
        """File > Merge models, over the models the model chooser lists."""
        from app.merging import MergeDialog

        dialog = MergeDialog(self.model_panel.models, self.settings.models_dir or api.user_models_dir(), self)
        dialog.merged.connect(lambda path: self.model_trained(path, "Merged"))
        dialog.show()
        return dialog

    def model_trained(self, path: str, verb: str = "Trained") -> None:
        """A model the app trained or merged: listed and chosen."""
        self.model_panel.refresh()
        i = self.model_panel.combo.findData(path)
        if i >= 0:
            self.model_panel.combo.setCurrentIndex(i)
        self.statusBar().showMessage(f"{verb} {Path(path).name}", 8000)

    def open_outputs_folder(self, *_) -> bool:
        """The outputs folder in the system's file manager."""
        folder = self.settings.outputs_path()
        folder.mkdir(parents=True, exist_ok=True)
        return QDesktopServices.openUrl(QUrl.fromLocalFile(str(folder)))

    @guarded
    def save(self, *_) -> bool:
        self.doc.anchor()
        if not self.doc.path or not self.doc.path.endswith(project.SUFFIX):
            return bool(self.save_as())
        project.save(self.doc, self.doc.path)
        self.remember(self.doc.path)
        self.statusBar().showMessage(f"Saved {self.doc.path}", 5000)
        self._update_title()
        return True

    @guarded
    def save_as(self, *_) -> bool:
        path, _ = QFileDialog.getSaveFileName(self, "Save as", self.doc.path or f"untitled{project.SUFFIX}",
                                              f"Latent Canvas project (*{project.SUFFIX})")
        if not path:
            return False
        if not path.endswith(project.SUFFIX):
            path += project.SUFFIX
        project.save(self.doc, path)
        self.remember(path)
        self._update_title()
        return True

    @guarded
    def export_png(self, *_):
        path, _ = QFileDialog.getSaveFileName(self, "Export PNG", "canvas.png", "PNG image (*.png)")
        if path:
            text = self.doc.history[-1].parameters if self.doc.history else format_parameters(self.doc.to_request(seed=0))
            write_png(path, self.shown_image(), text)
            self.statusBar().showMessage(f"Exported {Path(path).name}", 5000)

    def shown_image(self) -> np.ndarray:
        """What the canvas shows: the image layer, or the previewed result (pasted at its region when it has one)."""
        shown, region = self.canvas.preview, self.canvas.preview_region
        if shown is None:
            return self.doc.image
        if region and shown.shape[:2] == (region[3], region[2]) and self.doc.region_fits(region):
            x, y, w, h = region
            out = self.doc.image.copy()
            out[y:y + h, x:x + w] = shown
            return out
        return shown

    def fitted(self, im: Image.Image) -> np.ndarray:
        """RGB pixels of an image for the source layer; a huge one asks before downscaling to the settings' side."""
        im = im.convert("RGB")
        w, h = im.size
        side = self.settings.max_image_side
        if max(w, h) > side and self.ask("Large image", f"The image is {w}×{h}. Downscale it to fit {side} px?"):
            s = side / max(w, h)
            im = im.resize((max(int(w * s) // 8 * 8, 8), max(int(h * s) // 8 * 8, 8)), Image.Resampling.LANCZOS)
        return np.array(im)

    def refit(self, message: str, ms: int = 5000) -> None:
        """After the canvas changed under the view: no stale preview, the whole canvas in view, a status message."""
        self.canvas.set_preview(None)
        self.canvas.fit()
        self.statusBar().showMessage(message, ms)

    @guarded
    def load_image(self, path: str):
        """Open an image as the source layer; a huge one asks before downscaling; a 'parameters' chunk is restored."""
        with Image.open(path) as im:
            rgb = self.fitted(im)
        self.doc.set_image(rgb)
        text = read_png_parameters(path)
        if text:
            self.restore_parameters(text)
        self.refit(f"Opened {Path(path).name} ({rgb.shape[1]}×{rgb.shape[0]})")

    @guarded
    def copy_image(self, *_):
        """What the canvas shows onto the clipboard, as an image."""
        QGuiApplication.clipboard().setImage(to_qimage(self.shown_image()))
        self.statusBar().showMessage("Copied the canvas image", 3000)

    @guarded
    def paste_image(self, *_) -> bool:
        """The clipboard's image file or picture as the source layer, one undo step, as Open does."""
        if self.take_image_data(QGuiApplication.clipboard().mimeData(), "Pasted"):
            return True
        self.statusBar().showMessage("The clipboard holds no image", 5000)
        return False

    @guarded
    def paste_into(self, *_) -> bool:
        """The clipboard's picture laid onto the canvas, centred on the generation region; the canvas keeps its size."""
        picture = mime_picture(QGuiApplication.clipboard().mimeData())
        if picture is None:
            self.statusBar().showMessage("The clipboard holds no picture", 5000)
            return False
        rgb = np.array(picture.convert("RGB"))
        x, y, w, h = self.doc.generation_rect()
        self.doc.anchor()
        self.doc.float_picture(rgb, x + (w - rgb.shape[1]) // 2, y + (h - rgb.shape[0]) // 2)
        self.canvas.set_preview(None)
        self.statusBar().showMessage(f"Pasted a {rgb.shape[1]}×{rgb.shape[0]} picture: drag it into place, Enter lays "
                                     "it (Generate and Save do too), Esc removes it", 10000)
        return True

    def take_image_data(self, mime, verb: str) -> bool:
        """Mime data's first local image or project file (opened as Open does), else its picture (a copied or
        dragged image) as the source layer."""
        if mime is None:
            return False
        if self.handle_drop(mime):
            return True
        picture = mime_picture(mime)
        if picture is None:
            return False
        rgb = self.fitted(picture)
        self.doc.set_image(rgb, "paste image" if verb == "Pasted" else "drop image")
        self.refit(f"{verb} an image ({rgb.shape[1]}×{rgb.shape[0]})")
        return True

    def restore_parameters(self, text: str) -> None:
        parsed = parse_parameters(text)
        if "seed" in parsed:
            parsed["seed_mode"] = "fixed"
        if parsed.get("task") in api.TASKS:
            self.doc.task_override = parsed["task"]
        for k, v in parsed.items():
            if k in PARAM_NAMES:
                self.doc.set_param(k, v)
        self._sync_all()

    @guarded
    def upscale_path(self, path: str):
        """An image dropped on the upscale target: open it, switch the task to x4 upscale and start at once."""
        self.load_image(path)
        return self._upscale_now()

    def _upscale_now(self) -> int | None:
        """The canvas image enlarged x4 at once (the upscale task chosen for it)."""
        self.doc.set_param("upscale", True)
        self.doc.set_task_override("upscale")
        return self.generate()

    @guarded
    def copy_history_image(self, entry: int, image: int = 0):
        QGuiApplication.clipboard().setImage(to_qimage(self.doc.history[entry].images[image]))
        self.statusBar().showMessage("Copied the result", 3000)

    @guarded
    def upscale_history(self, entry: int, image: int = 0) -> int | None:
        """A result as the new source image (one undo step), enlarged x4 at once, as a dropped image is."""
        self.doc.set_image(self.doc.history[entry].images[image], "upscale result")
        self.refit("Upscaling the result x4")
        return self._upscale_now()

    def dragEnterEvent(self, e) -> None:
        mime = e.mimeData()
        if mime.hasImage() or any(u.toLocalFile().lower().endswith(IMAGE_SUFFIXES + (project.SUFFIX,))
                                  for u in mime.urls()):
            e.acceptProposedAction()

    def dropEvent(self, e) -> None:
        if self.take_image_data(e.mimeData(), "Dropped"):
            e.acceptProposedAction()

    @guarded
    def handle_drop(self, mime) -> bool:
        for url in mime.urls():
            path = url.toLocalFile()
            if path.lower().endswith(IMAGE_SUFFIXES + (project.SUFFIX,)):
                self.open_path(path)
                return True
        return False
