"""The main window: menus, docks and the controller wiring Document, Canvas, panels and the engine bridge."""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QAction, QActionGroup, QColor, QKeySequence
from PySide6.QtWidgets import (QColorDialog, QDialog, QDockWidget, QLabel, QMainWindow, QMessageBox, QScrollArea,
                               QToolBar, QVBoxLayout, QWidget)

from app import project
from app.bridge import EngineBridge
from app.canvas import Canvas
from app.dialogs import BoxLabelDialog, ExtendDialog, SettingsDialog, ShortcutsDialog, about_html, guarded
from app.document import Document, Params
from app.files import FileActions
from app.history_actions import HistoryActions
from app.icon import app_icon, swatch
from app.live import LiveMode
from app.panels import GenerateBar, HistoryStrip, ModelPanel, PalettePanel, ParamsPanel
from app.prompt_panel import PromptPanel
from app.parameters import format_parameters, merge_parameters, write_png
from app.settings import AppSettings, load_settings
from app.control_panel import ControlPanel
from app.task_panels import RegionPromptsPanel, TaskOptionsPanel
from engine import api

TOOL_KEYS = {"move": "V", "mask": "B", "eraser": "E", "box": "R", "semantic": "S", "fill": "G", "region": "C",
             "paint": "P"}


class MainWindow(FileActions, HistoryActions, QMainWindow):
    """Views over one Document; engine events arrive through EngineBridge signals on the GUI thread."""

    def __init__(self, runner: api.Runner | None = None, settings: AppSettings | None = None,
                 recovery: project.Recovery | None = None, persist_settings: bool = True):
        super().__init__()
        self.settings = settings or load_settings()
        self.persist_settings = persist_settings
        self.recovery = recovery
        self.doc = Document(512, 512)
        self._auto_size = (self.doc.width, self.doc.height)
        self._auto_hires = self._default_hires = (Params.hires_upscaler, Params.hires_strength)
        self._auto_cfg = Params.cfg_scale
        self._planner_words: tuple[str, ...] | None = None
        self.bridge = EngineBridge(runner, self)
        self.last_error: str | None = None
        self.last_request: api.Request | None = None
        self.last_region: tuple | None = None
        self.last_rect: tuple[int, int, int, int] = (0, 0, 0, 0)
        self._device_known = False
        self._families: tuple[int | None, list[str]] = (None, [])
        self.written: list[Path] = []
        self._started_at = 0.0
        self.setWindowTitle("Latent Canvas")
        self.setWindowIcon(app_icon())
        self.setAcceptDrops(True)
        self.resize(1280, 820)

        self.canvas = Canvas(self.doc)
        self.canvas.ask_box_label = self._ask_box_label
        self.setCentralWidget(self.canvas)
        self.prompt_panel = PromptPanel(self.doc)
        self.model_panel = ModelPanel(self.doc, self.settings.extra_model_dirs())
        self.params_panel = ParamsPanel(self.doc)
        self.task_options = TaskOptionsPanel(self.doc)
        self.control_panel = ControlPanel(self.doc, self.settings.extra_model_dirs())
        self.region_prompts = RegionPromptsPanel(self.doc)
        self.generate_bar = GenerateBar()
        self.palette = PalettePanel()
        self.history_strip = HistoryStrip()
        self.live = LiveMode(self)
        self.queue: list[tuple] = []  # (Request, region, rect): generations waiting behind the running job
        self.device_label = QLabel()
        self.brush_label = QLabel()
        self._build_docks()
        self._build_actions()
        self.statusBar().addPermanentWidget(self.brush_label)
        self.statusBar().addPermanentWidget(self.device_label)

        self.bridge.started.connect(self.on_started)
        self.bridge.progress.connect(self.on_progress)
        self.bridge.preview.connect(self.on_preview)
        self.bridge.result.connect(self.on_result)
        self.bridge.failed.connect(self.on_failed)
        self.bridge.cancelled.connect(self.on_cancelled)
        self.generate_bar.generate_button.clicked.connect(self.generate)
        self.generate_bar.cancel_button.clicked.connect(self.cancel)
        self.model_panel.modelChanged.connect(self._model_changed)
        self.model_panel.modelsListed.connect(self.task_options.set_models)
        self.model_panel.loraAdded.connect(self.prompt_panel.install_lora)
        self.prompt_panel.styleSaved.connect(self.save_style)
        self.prompt_panel.styleDeleted.connect(self.delete_style)
        self.prompt_panel.set_styles(self.settings.style_names())
        self.task_options.drop_target.imageDropped.connect(self.upscale_path)
        self.palette.labelChosen.connect(self._label_chosen)
        self.history_strip.applyRequested.connect(self.apply_history)
        self.history_strip.discardRequested.connect(self.discard_history)
        self.history_strip.copyRequested.connect(self.copy_history)
        self.history_strip.shown.connect(self.show_history)
        self.history_strip.copyImageRequested.connect(self.copy_history_image)
        self.history_strip.upscaleRequested.connect(self.upscale_history)
        self.history_strip.variationsRequested.connect(self.vary_history)
        self.live.panel.keepRequested.connect(self.keep_live)
        self.live.panel.applyRequested.connect(self.apply_live)
        self.canvas.brushChanged.connect(self._brush_changed)

        self.autosave_timer = QTimer(self)
        self.autosave_timer.timeout.connect(self.autosave)
        self.autosave_timer.start(int(self.settings.autosave_interval_s * 1000))
        self.model_panel.refresh()
        self.set_document(self.doc)
        self._brush_changed(self.canvas.brush_radius, self.canvas.brush_hardness)
        self._show_device_setting()

    def _show_device_setting(self) -> None:
        """Before the engine reports its device, the status bar names the chosen device and precision."""
        if not self._device_known:
            self.device_label.setText(f"device {self.settings.device} · {self.settings.precision} (not started)")

    # --- layout ----------------------------------------------------------------------------------------------
    def _build_docks(self) -> None:
        side = QWidget()
        lay = QVBoxLayout(side)
        for title, w in (("Prompt", self.prompt_panel), ("Model", self.model_panel), ("Sampling", self.params_panel),
                         ("Task options", self.task_options), ("Control", self.control_panel),
                         ("Region prompts", self.region_prompts)):
            lay.addWidget(QLabel(f"<b>{title}</b>"))
            lay.addWidget(w)
        lay.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidget(side)
        scroll.setWidgetResizable(True)
        scroll.setMinimumWidth(330)
        docks = {}
        for title, w, area in (("Generate", scroll, Qt.DockWidgetArea.RightDockWidgetArea),
                               ("Palette", self.palette, Qt.DockWidgetArea.LeftDockWidgetArea),
                               ("History", self.history_strip, Qt.DockWidgetArea.BottomDockWidgetArea)):
            dock = QDockWidget(title, self)
            dock.setObjectName(title)
            dock.setWidget(w)
            self.addDockWidget(area, dock)
            docks[title] = dock
        self.live_dock = QDockWidget("Live", self)
        self.live_dock.setObjectName("Live")
        self.live_dock.setWidget(self.live.panel)
        self.live_dock.setFeatures(QDockWidget.DockWidgetFeature.DockWidgetMovable
                                   | QDockWidget.DockWidgetFeature.DockWidgetFloatable)  # Ctrl+L hides it
        self.splitDockWidget(docks["Generate"], self.live_dock, Qt.Orientation.Vertical)
        self.live_dock.hide()
        self.palette.setMinimumWidth(150)
        self.resizeDocks([docks["Palette"], docks["Generate"]], [180, 340], Qt.Orientation.Horizontal)
        bar = QToolBar("Generate", self)
        bar.setObjectName("GenerateBar")
        bar.setMovable(False)
        bar.addWidget(self.generate_bar)
        self.addToolBar(Qt.ToolBarArea.TopToolBarArea, bar)
        self.generate_toolbar = bar

    def _action(self, menu, text, slot, shortcut=None, checkable=False) -> QAction:
        act = QAction(text, self, checkable=checkable)
        if shortcut:
            act.setShortcuts([QKeySequence(s) for s in (shortcut if isinstance(shortcut, list) else [shortcut])])
        act.triggered.connect(slot)
        menu.addAction(act)
        self.addAction(act)
        return act

    def _build_actions(self) -> None:
        mb = self.menuBar()
        f = mb.addMenu("&File")
        self._action(f, "&New", self.new_document, QKeySequence.StandardKey.New)
        self._action(f, "&Open...", self.open_dialog, QKeySequence.StandardKey.Open)
        self.recent_menu = f.addMenu("Open &Recent")
        self.recent_menu.aboutToShow.connect(self.fill_recent_menu)
        self._action(f, "&Save", self.save, QKeySequence.StandardKey.Save)
        self._action(f, "Save &As...", self.save_as, "Ctrl+Shift+S")
        self._action(f, "&Export PNG...", self.export_png, "Ctrl+E")
        self._action(f, "Open &outputs folder", self.open_outputs_folder)
        self._action(f, "&Train a model on a folder...", self.train_dialog)
        self._action(f, "&Merge models...", self.merge_dialog)
        f.addSeparator()
        self._action(f, "Se&ttings...", self.settings_dialog, "Ctrl+,")
        self._action(f, "&Quit", self.close, QKeySequence.StandardKey.Quit)
        e = mb.addMenu("&Edit")
        self.undo_action = self._action(e, "&Undo", lambda: self.doc.undo(), QKeySequence.StandardKey.Undo)
        self.redo_action = self._action(e, "&Redo", lambda: self.doc.redo(), ["Ctrl+Shift+Z", "Ctrl+Y"])
        e.addSeparator()
        self._action(e, "&Copy image", self.copy_image, QKeySequence.StandardKey.Copy)
        self._action(e, "&Paste image", self.paste_image, QKeySequence.StandardKey.Paste)
        self._action(e, "Paste &into canvas", self.paste_into, "Ctrl+Shift+V")
        e.addSeparator()
        self._action(e, "Clear &mask", lambda: self.doc.clear_layer("mask"))
        self._action(e, "&Invert mask", lambda: self.doc.invert_mask(), "Ctrl+I")
        self._action(e, "Clear &labels", lambda: self.doc.clear_layer("labels"))
        self._action(e, "&Delete box", self.delete_box)
        self._action(e, "E&xtend canvas...", self.extend_canvas)
        self._action(e, "C&rop to generation region", self.crop_canvas)
        self._action(e, "&Whole canvas as generation region", lambda: self.doc.set_region(None), "Ctrl+Shift+A")
        v = mb.addMenu("&View")
        self._action(v, "&Fit", self.canvas.fit, "Ctrl+0")
        self._action(v, "&100%", self.canvas.actual_size, "Ctrl+1")
        self._action(v, "Zoom &in", lambda: self.canvas.zoom_by(1.25), QKeySequence.StandardKey.ZoomIn)
        self._action(v, "Zoom &out", lambda: self.canvas.zoom_by(0.8), QKeySequence.StandardKey.ZoomOut)
        v.addSeparator()
        self.preview_action = self._action(v, "Show the &result over the canvas", self.toggle_preview, "H", True)
        self.preview_action.setChecked(True)
        t = mb.addMenu("&Tools")
        bar = QToolBar("Tools", self)
        bar.setObjectName("Tools")
        self.addToolBar(Qt.ToolBarArea.LeftToolBarArea, bar)
        group = QActionGroup(self)
        self.tool_actions = {}
        labels = {"move": "Select/move", "mask": "Mask brush", "eraser": "Mask eraser", "box": "Layout box",
                  "semantic": "Semantic brush", "fill": "Semantic fill", "region": "Generation region",
                  "paint": "Colour brush"}
        for tool, text in labels.items():
            act = self._action(t, text, lambda _=False, tool=tool: self.canvas.set_tool(tool), TOOL_KEYS[tool], True)
            act.setActionGroup(group)
            bar.addAction(act)
            self.tool_actions[tool] = act
        self.tool_actions[self.canvas.tool].setChecked(True)
        self.colour_action = self._action(t, "Brush &colour...", self.choose_colour)
        bar.addAction(self.colour_action)
        self.canvas.paintColourChanged.connect(lambda rgb: self.colour_action.setIcon(swatch(rgb)))
        self.canvas.set_paint_colour(self.canvas.paint_colour)
        g = mb.addMenu("&Generate")
        self.generate_action = self._action(g, "&Generate", self.generate, ["Ctrl+Return", "Ctrl+Enter"])
        self.cancel_action = self._action(g, "&Cancel", self.cancel, "Esc")
        g.addSeparator()
        self.live_action = self._action(g, "&Live", self.set_live, "Ctrl+L", checkable=True)
        self.live_action.setToolTip("Live: regenerate after every edit at one seed, shown beside the canvas (Ctrl+L)")
        self._action(g, "&Keep live result", self.keep_live, "Ctrl+Shift+Return")
        self.generate_toolbar.addAction(self.live_action)
        h = mb.addMenu("&Help")
        self._action(h, "&Keyboard shortcuts", self.show_shortcuts, "F1")
        self._action(h, "&About Latent Canvas", self.about)

    def toggle_preview(self, *_) -> None:
        """H: flip between the result (or preview) and the canvas under it, to compare before and after."""
        self.canvas.show_preview = self.preview_action.isChecked()
        self.canvas.update()

    def show_shortcuts(self, *_) -> ShortcutsDialog:
        dlg = ShortcutsDialog(self.actions(), self)
        dlg.show()
        return dlg

    def about_text(self) -> str:
        return about_html((("Your models", self.settings.models_dir or api.user_models_dir()),
                           ("Bundled models", api.default_models_dir()), ("Outputs", str(self.settings.outputs_path())),
                           ("Autosave", str(self.recovery.folder) if self.recovery else "off")))

    def about(self, *_) -> None:
        QMessageBox.about(self, "About Latent Canvas", self.about_text())

    # --- document --------------------------------------------------------------------------------------------
    def set_document(self, doc: Document) -> None:
        self.doc.unsubscribe(self._doc_changed)
        self.doc = doc
        doc.subscribe(self._doc_changed)
        self.canvas.set_document(doc)
        self._sync_all()
        self.live.changed("all")

    def _sync_all(self) -> None:
        for panel in (self.prompt_panel, self.params_panel, self.model_panel, self.history_strip, self.task_options,
                      self.region_prompts, self.control_panel):
            panel.sync(self.doc)
        self._update_title()

    def _doc_changed(self, what: str) -> None:
        self.live.changed("image" if what == "floating" else what)
        if what in ("params", "all", "size", "mask", "labels", "boxes", "image", "region"):
            self.params_panel.sync(self.doc)
            self.task_options.sync(self.doc)
            self.model_panel.follow_task()
            task = self.doc.task()
            self.prompt_panel.set_model(self._prompt_reader(self.model_panel.shown, task))
            x, y, w, h = self.doc.generation_rect()
            where = f" · region {w}×{h} at {x},{y}" if self.doc.region else ""
            self.canvas.region_text = f"{self.doc.width}×{self.doc.height}{where} · {task}"
        if what in ("params", "all", "boxes", "undo"):
            self.region_prompts.sync(self.doc)
        if what in ("params", "all", "control"):
            self.control_panel.sync(self.doc)
        if what in ("history", "all"):
            self.history_strip.sync(self.doc)
        if what in ("params", "all") and self.prompt_panel.prompt.toPlainText() != self.doc.params.prompt:
            self.prompt_panel.sync(self.doc)
        self._update_title()

    def _update_title(self) -> None:
        name = Path(self.doc.path).name if self.doc.path else "untitled"
        self.setWindowTitle(f"{'*' if self.doc.dirty else ''}{name} — Latent Canvas")
        self.undo_action.setEnabled(self.doc.can_undo)
        self.redo_action.setEnabled(self.doc.can_redo)

    def ask(self, title: str, question: str) -> bool:
        return QMessageBox.question(self, title, question) == QMessageBox.StandardButton.Yes

    def report_error(self, title: str, message: str, detail: str = "") -> None:
        """A readable, non-modal message; the canvas and the document stay as they were."""
        self.last_error = message
        self.statusBar().showMessage(f"{title}: {message}", 15000)
        box = QMessageBox(QMessageBox.Icon.Warning, title, message, QMessageBox.StandardButton.Ok, self)
        if detail:
            box.setDetailedText(detail)
        box.setModal(False)
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.show()

    @guarded
    def settings_dialog(self, *_):
        dlg = SettingsDialog(self.settings, self)
        if dlg.exec():
            self.apply_settings(dlg.value())

    def apply_settings(self, s: AppSettings) -> None:
        self.settings = s
        self.store_settings()
        self.autosave_timer.start(int(s.autosave_interval_s * 1000))
        self._show_device_setting()
        self.model_panel.extra_dirs = s.extra_model_dirs()
        self.model_panel.refresh()

    def _ask_box_label(self):
        dlg = BoxLabelDialog(self.palette.names, getattr(self, "_last_box_label", ""), self)
        if dlg.exec():
            answer = dlg.answer()
            if answer:
                self._last_box_label = answer[0]
            return answer
        return None

    def ask_extend(self) -> tuple[int, int, int, int] | None:
        dlg = ExtendDialog(self.doc.width, self.doc.height, self)
        return dlg.pads() if dlg.exec() == QDialog.DialogCode.Accepted else None

    @guarded
    def extend_canvas(self, *_) -> bool:
        """Outpainting: grow the canvas (one undo step); the new area is masked, so Generate fills it by inpainting."""
        pads = self.ask_extend()
        if not pads or not self.doc.extend(*pads):
            return False
        self.doc.set_task_override(None)
        self.refit(f"Canvas {self.doc.width}×{self.doc.height}: the new area is masked, Generate fills it", 8000)
        return True

    @guarded
    def crop_canvas(self, *_) -> bool:
        """Cut the canvas down to the generation region (one undo step)."""
        if self.doc.region is None:
            self.statusBar().showMessage("Draw a generation region (C) to crop to first", 5000)
            return False
        if not self.doc.crop(self.doc.region):
            return False
        self.refit(f"Cropped to {self.doc.width}×{self.doc.height}")
        return True

    def delete_box(self, *_):
        if self.canvas.selected_box is not None:
            self.doc.delete_box(self.canvas.selected_box)

    def _prompt_reader(self, info, task: str | None = None):
        """Who reads the prompt: the model, or for a layout job without boxes the text-to-layout planner."""
        if (task or self.doc.task()) != "layout" or self.doc.boxes or info is None:
            return info
        if self._planner_words is None:
            self._planner_words = api.planner_vocabulary()
        return replace(info, name="the layout planner", vocabulary=self._planner_words)

    def _model_changed(self, info) -> None:
        self.prompt_panel.set_model(self._prompt_reader(info))
        self.control_panel.list_controlnets(info.path if info is not None else "")
        if self.doc.params.model == "default":
            info = api.default_model_for("semantic") or info
        ok = info is not None and not info.error
        side = api.suggested_size(info.image_size) if ok else 0
        if side and (self.doc.width, self.doc.height) == self._auto_size and self.doc.start_size(side, side):
            self._auto_size = (side, side)
        p = self.doc.params
        if ok and (p.hires_upscaler, p.hires_strength) in (self._auto_hires, self._default_hires):
            self._auto_hires = api.suggested_hires(info.image_size, api.default_model_for("upscale") is not None)
            self.doc.set_param("hires_upscaler", self._auto_hires[0])
            self.doc.set_param("hires_strength", self._auto_hires[1])
        if ok and p.cfg_scale in (self._auto_cfg, Params.cfg_scale):
            self._auto_cfg = api.suggested_cfg(info.family)
            self.doc.set_param("cfg_scale", self._auto_cfg)
        self.palette.set_names(info.label_names if ok else (), info.label_colors if ok else ())
        self.region_prompts.set_names(self.palette.names)
        self.canvas.set_colors(self.palette.colors)

    def _label_chosen(self, index: int) -> None:
        self.canvas.current_label = index
        if self.canvas.tool not in ("semantic", "fill"):
            self.tool_actions["semantic"].trigger()

    def choose_colour(self, *_) -> None:
        """The colour brush's colour (Alt+click on the canvas with the colour brush picks one from the image)."""
        colour = QColorDialog.getColor(QColor(*self.canvas.paint_colour), self, "Brush colour")
        if colour.isValid():
            self.canvas.set_paint_colour((colour.red(), colour.green(), colour.blue()))
            self.tool_actions["paint"].trigger()

    def _brush_changed(self, radius: float, hardness: float) -> None:
        self.brush_label.setText(f"brush {radius:.0f} px · hardness {hardness:.1f}")

    # --- generation ------------------------------------------------------------------------------------------
    @guarded
    def generate(self, *_) -> int | None:
        """Run the canvas as it is now; while a job runs, queue it (a live job gives way at once)."""
        self.doc.anchor()
        job = (self.doc.to_request(self.settings), self.doc.region, self.doc.generation_rect())
        if self.bridge.busy:
            self.queue.append(job)
            self.generate_bar.queued = len(self.queue)
            if self.live.job is not None and self.bridge.current_job == self.live.job:
                self.live.pending = True
                self.bridge.cancel()
            self.statusBar().showMessage(f"Queued: {len(self.queue)} waiting", 5000)
            return None
        return self._start(*job)

    def _start(self, req: api.Request, region, rect) -> int:
        self.last_request, self.last_region, self.last_rect = req, region, rect
        self._started_at = time.perf_counter()
        job = self.bridge.submit(req)
        self.generate_bar.set_busy(True)
        self.statusBar().showMessage(f"Generating ({req.task}, seed {req.seed})...")
        return job

    def cancel(self, *_) -> None:
        """Esc: remove a floating paste, else cancel the running job and empty the queue."""
        if self.doc.drop_floating():
            self.statusBar().showMessage("Paste removed", 3000)
        elif self.bridge.busy:
            self.queue.clear()
            self.generate_bar.queued = 0
            self.bridge.cancel()
            self.generate_bar.progress.setFormat("cancelling...")

    def _next(self) -> None:
        """After a job ends: the next queued generation, else the edit Live is waiting to show."""
        if self.queue and not self.bridge.busy:
            self._start(*self.queue.pop(0))
            self.generate_bar.queued = len(self.queue)
        else:
            self.live.resume()

    def _current(self, ev) -> bool:
        return ev.job_id == self.bridge.current_job

    @guarded
    def on_started(self, ev: api.Started):
        """Device, precision and every model the job has used so far (a two-pass job names both)."""
        self._device_known = True
        job, families = self._families
        families = families if job == ev.job_id else []
        if ev.family and ev.family not in families:
            families = families + [ev.family]
        self._families = (ev.job_id, families)
        used = [" + ".join(families)] if families else []
        self.device_label.setText(" · ".join([ev.device or "?", ev.dtype or "?", *used]))

    @guarded
    def set_live(self, on: bool | None = None) -> None:
        on = self.live_action.isChecked() if on is None else bool(on)
        self.live_action.setChecked(on)
        if on and not self.live_dock.isVisible():
            self.live_dock.show()
            generate = self.findChild(QDockWidget, "Generate")
            self.resizeDocks([generate, self.live_dock], [1, 1], Qt.Orientation.Vertical)
        self.live_dock.setVisible(on)
        self.live.set_enabled(on)
        self.statusBar().showMessage(f"Live {'on' if on else 'off'}", 4000)

    @guarded
    def keep_live(self, *_) -> bool:
        """The newest live image into the history and the outputs folder, as if Generate had made it."""
        if self.live.kept is None:
            return False
        ev, req, region, rect = self.live.kept
        self._record(ev, req, region, rect)
        return True

    @guarded
    def apply_live(self, *_) -> bool:
        """Keep the newest live image, then lay it onto the canvas where it was made (one undo step)."""
        if not self.keep_live():
            return False
        self.apply_history(len(self.doc.history) - 1)
        return True

    def _live_ended(self, ev) -> None:
        self.live.finished(ev)
        self.generate_bar.finish("live")
        self._next()

    @guarded
    def on_progress(self, ev: api.Progress):
        if self._current(ev):
            self.generate_bar.show_progress(ev.step, ev.total, ev.eta_s)

    @guarded
    def on_preview(self, ev: api.Preview):
        if self.live.owns(ev) and ev.image is not None:
            self.live.preview(ev)
        elif self._current(ev) and ev.image is not None:
            self.canvas.set_preview(ev.image, self.last_region)

    @guarded
    def on_result(self, ev: api.Result):
        if self.live.owns(ev):
            return self._live_ended(ev)
        self.generate_bar.finish("done")
        self._record(ev, self.last_request, self.last_region, self.last_rect)
        self._next()

    def _record(self, ev: api.Result, req: api.Request, region, rect) -> None:
        """A finished result into the history (shown on the canvas), the outputs folder and the autosave."""
        seeds = list(ev.seeds) or [req.seed + i for i in range(len(ev.images))]
        texts = [merge_parameters(format_parameters(req, seed=s), ev.parameters) for s in seeds]
        if ev.images:
            self.doc.add_history(ev.images, texts[0], seeds, task=req.task, region=region)
            self.canvas.set_preview(ev.images[0], region)
            self.history_strip.select_last()
        done = f"Done in {ev.elapsed_s or time.perf_counter() - self._started_at:.1f} s"
        if ev.boxes and not self.doc.boxes:
            self.doc.add_planned_boxes([(b.label, b.box) for b in ev.boxes], rect)
            done += f"; planned {len(ev.boxes)} boxes from the prompt (move them and generate again)"
        self.statusBar().showMessage(done, 8000)
        self.write_outputs(ev.images, texts)
        self.autosave()

    def write_outputs(self, images, texts) -> None:
        """Every result goes to the outputs folder as a PNG with a 'parameters' text chunk."""
        folder = self.settings.outputs_path()
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for i, (img, text) in enumerate(zip(images, texts)):
            path = folder / f"{stamp}-{len(self.written):04d}-{i}.png"
            try:
                write_png(path, np.asarray(img, np.uint8), text)
                self.written.append(path)
            except OSError as e:
                self.report_error("Cannot write output", f"{path}: {e}")

    @guarded
    def on_failed(self, ev: api.Failed):
        if self.live.owns(ev):
            self.statusBar().showMessage(f"Live: {ev.message or 'failed'}", 8000)
            return self._live_ended(ev)
        self.canvas.set_preview(None)
        self.generate_bar.finish("failed")
        self.report_error("Generation failed", ev.message or "unknown error", ev.detail)
        self._next()

    @guarded
    def on_cancelled(self, ev: api.Cancelled):
        if self.live.owns(ev):
            return self._live_ended(ev)
        self.canvas.set_preview(None)
        self.generate_bar.finish(f"cancelled at step {ev.step}")
        self.statusBar().showMessage("Cancelled", 5000)
        self._next()

    # --- autosave, recovery, exit ----------------------------------------------------------------------------
    @guarded
    def autosave(self, *_):
        if self.recovery is not None and self.doc.dirty:
            self.recovery.autosave(self.doc)

    def offer_recovery(self) -> bool:
        if self.recovery is None or not self.recovery.start():
            return False
        if self.ask("Recover", "Latent Canvas did not shut down cleanly. Restore the autosaved canvas?"):
            try:
                self.set_document(self.recovery.recover())
                return True
            except project.ProjectError as e:
                self.report_error("Recovery failed", str(e))
        self.recovery.discard()
        return False

    def closeEvent(self, e) -> None:
        if not self.confirm_discard():
            e.ignore()
            return
        self.autosave_timer.stop()
        self.bridge.shutdown()
        if getattr(self, "trainer", None) is not None and self.trainer.running:  # let it save its state
            self.trainer.stop()
            self.trainer.process.waitForFinished(15000)
        if self.recovery is not None:
            self.recovery.finish()
        e.accept()
