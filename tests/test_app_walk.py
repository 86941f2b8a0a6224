"""The issue's list, item by item, through the real widgets: zoom, pan, brush keys, task override, seeds, copy
parameters, progress text, status bar, export, autosave timer."""
import math
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("pytestqt")
from PySide6.QtCore import QPoint, QPointF, Qt  # noqa: E402
from PySide6.QtGui import QWheelEvent  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402
from PySide6.QtWidgets import QApplication, QFileDialog  # noqa: E402
from test_app_widgets import at, drag, make_window  # noqa: E402,F401

from app import project  # noqa: E402
from app.demo import fake_runner  # noqa: E402
from app.panels import GenerateBar  # noqa: E402
from app.parameters import parse_parameters, read_png_parameters  # noqa: E402


def _wheel(widget, pos: QPointF, delta: int) -> None:
    ev = QWheelEvent(pos, widget.mapToGlobal(pos), QPoint(0, 0), QPoint(0, delta), Qt.MouseButton.NoButton,
                     Qt.KeyboardModifier.NoModifier, Qt.ScrollPhase.NoScrollPhase, False)
    QApplication.sendEvent(widget, ev)


def test_wheel_zooms_about_the_cursor_and_fit_and_100_percent(make_window):
    win = make_window()
    c = win.canvas
    c.resize(600, 500)
    QTest.keyClick(win, Qt.Key.Key_0, Qt.KeyboardModifier.ControlModifier)
    r = c.image_rect()
    assert r.width() <= c.width() and r.height() <= c.height() and (r.width() > 0.8 * (c.width() - 24) or r.height() > 0.8 * (c.height() - 48))
    fitted = c.scale
    anchor = c.to_widget(30, 20)
    _wheel(c, anchor, 240)
    assert c.scale > fitted * 1.3
    back = c.to_image(anchor)
    assert (back.x(), back.y()) == pytest.approx((30, 20), abs=0.05)
    _wheel(c, anchor, -480)
    assert c.scale < fitted
    QTest.keyClick(win, Qt.Key.Key_1, Qt.KeyboardModifier.ControlModifier)
    assert c.scale == 1.0 and c.image_rect().width() == win.doc.width


def test_middle_button_and_space_drag_pan_without_painting(make_window):
    win = make_window()
    c = win.canvas
    win.tool_actions["mask"].trigger()
    before = QPointF(c.offset)
    a, b = at(c, 30, 30), at(c, 60, 50)
    QTest.mousePress(c, Qt.MouseButton.MiddleButton, Qt.KeyboardModifier.NoModifier, a)
    QTest.mouseMove(c, b)
    QTest.mouseRelease(c, Qt.MouseButton.MiddleButton, Qt.KeyboardModifier.NoModifier, b)
    moved = c.offset - before
    assert (moved.x(), moved.y()) == pytest.approx((b.x() - a.x(), b.y() - a.y()), abs=1)
    before = QPointF(c.offset)
    QTest.keyPress(c, Qt.Key.Key_Space)
    QTest.mousePress(c, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, b)
    QTest.mouseMove(c, a)
    QTest.mouseRelease(c, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, a)
    QTest.keyRelease(c, Qt.Key.Key_Space)
    moved = c.offset - before
    assert (moved.x(), moved.y()) == pytest.approx((a.x() - b.x(), a.y() - b.y()), abs=1)
    assert not win.doc.mask.any() and not win.doc.can_undo
    drag(c, [(20, 20), (30, 20)])
    assert win.doc.mask.any()


def test_bracket_keys_size_and_shift_brackets_hardness(make_window):
    win = make_window()
    c = win.canvas
    c.set_brush(radius=10, hardness=0.5)
    QTest.keyClick(c, Qt.Key.Key_BracketLeft)
    assert c.brush_radius == pytest.approx(8) and c.brush_hardness == 0.5
    QTest.keyClick(c, Qt.Key.Key_BracketRight, Qt.KeyboardModifier.ShiftModifier)
    assert c.brush_hardness == pytest.approx(0.6) and c.brush_radius == pytest.approx(8)
    QTest.keyClick(c, Qt.Key.Key_BracketLeft, Qt.KeyboardModifier.ShiftModifier)
    QTest.keyClick(c, Qt.Key.Key_BracketLeft, Qt.KeyboardModifier.ShiftModifier)
    assert c.brush_hardness == pytest.approx(0.4) and "hardness 0.4" in win.brush_label.text()
    c.set_brush(hardness=0.0)
    drag(c, [(40, 40)])
    soft = win.doc.mask[40, 40 - 6]
    assert 0 < soft < 255


def test_task_is_shown_and_the_override_wins(make_window):
    win = make_window()
    combo = win.params_panel.task
    assert combo.itemText(0) == "auto (txt2img)"
    win.doc.stroke("mask", [(20, 20)], radius=4)
    assert combo.itemText(0) == "auto (inpaint)" and "inpaint" in win.canvas.region_text
    combo.setCurrentIndex(combo.findData("img2img"))
    assert win.doc.task() == "img2img" and win.doc.to_request().task == "img2img" and "img2img" in win.canvas.region_text
    assert win.params_panel.strength.isEnabled()
    combo.setCurrentIndex(0)
    assert win.doc.task() == "inpaint"


def test_reuse_last_seed_copy_parameters_progress_and_status(make_window, qtbot):
    seen = []
    win = make_window(runner=lambda r, ctx, cache: seen.append(r) or fake_runner(r, ctx, cache, step_s=0.002))
    assert win.device_label.text() == "device auto · auto (not started)"
    win.apply_settings(replace(win.settings, device="cpu", precision="bfloat16"))
    assert win.device_label.text() == "device cpu · bfloat16 (not started)"
    win.doc.set_param("prompt", "a lighthouse")
    win.doc.set_param("steps", 4)
    with qtbot.waitSignal(win.bridge.result, timeout=10000):
        win.generate()
    first = win.doc.history[0].seeds[0]
    assert "cpu (demo)" in win.device_label.text() and "float32" in win.device_label.text()
    win.params_panel.seed_mode.setCurrentIndex(win.params_panel.seed_mode.findData("reuse"))
    with qtbot.waitSignal(win.bridge.result, timeout=10000):
        win.generate()
    assert seen[-1].seed == first
    win.doc.set_param("seed_mode", "random")
    win.prompt_panel.prompt.setPlainText("a windmill")
    win.params_panel.steps.setValue(9)
    win.history_strip.list.setCurrentRow(0)
    win.history_strip.copy_button.click()
    assert win.prompt_panel.prompt.toPlainText() == "a lighthouse" and win.params_panel.steps.value() == 4
    assert win.params_panel.seed_mode.currentData() == "fixed" and win.params_panel.seed.value() == first % 2**31
    assert win.doc.to_request().seed == first
    win.history_strip.list.setCurrentRow(1)
    win.history_strip.discard_button.click()
    assert len(win.doc.history) == 1 and win.history_strip.list.count() == 1 and win.canvas.preview is None


def test_progress_text_names_steps_and_time_left(qtbot):
    bar = GenerateBar()
    qtbot.addWidget(bar)
    bar.set_busy(True)
    bar.show_progress(3, 6, 12.4)
    assert (bar.progress.value(), bar.progress.maximum(), bar.progress.format()) == (3, 6, "step 3/6 · 12 s left")
    bar.show_progress(3, 60, 300.0)
    assert bar.progress.format() == "step 3/60 · 5.0 min left"
    bar.show_progress(0, 6, math.nan)
    assert bar.progress.format() == "step 0/6"


def test_export_png_writes_what_the_canvas_shows_with_parameters(make_window, qtbot, tmp_path, monkeypatch):
    win = make_window()
    target = tmp_path / "export.png"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, **k: (str(target), ""))
    win.doc.set_image(np.full((96, 128, 3), 200, np.uint8))
    win.doc.set_region((32, 16, 64, 48))
    win.doc.set_param("prompt", "a barn")
    win.export_png()
    assert np.array_equal(np.asarray(Image.open(target)), win.doc.image)
    assert parse_parameters(read_png_parameters(target))["prompt"] == "a barn"
    win.params_panel.task.setCurrentIndex(win.params_panel.task.findData("img2img"))
    with qtbot.waitSignal(win.bridge.result, timeout=10000):
        win.generate()
    win.export_png()
    out = np.asarray(Image.open(target))
    assert out.shape == (96, 128, 3) and np.array_equal(out[16:64, 32:96], win.doc.history[0].images[0])
    assert (out[:16] == 200).all() and read_png_parameters(target) == win.doc.history[0].parameters


def test_autosave_every_minute_only_when_dirty(make_window, tmp_path):
    win = make_window()
    saved = tmp_path / "rec" / "autosave.lcproj"
    assert win.autosave_timer.isActive() and win.autosave_timer.interval() == 60_000
    win.autosave_timer.timeout.emit()
    assert not saved.exists()
    win.doc.stroke("mask", [(12, 12)], radius=3)
    win.autosave_timer.timeout.emit()
    assert project.load(saved).mask[12, 12] > 0


def test_image_dropped_on_the_upscale_target_starts_an_upscale(make_window, qtbot, tmp_path):
    from PySide6.QtCore import QMimeData, QUrl
    from PySide6.QtGui import QDropEvent

    seen = []
    win = make_window(runner=lambda r, ctx, cache: seen.append(r) or fake_runner(r, ctx, cache, step_s=0.002))
    path = tmp_path / "small.png"
    Image.fromarray(np.full((24, 32, 3), 77, np.uint8)).save(path)
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(path))])
    target = win.task_options.drop_target
    ev = QDropEvent(QPointF(5, 5), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    assert target.acceptDrops()
    with qtbot.waitSignal(win.bridge.result, timeout=10000):
        target.dropEvent(ev)
    assert ev.isAccepted() and seen[-1].task == "upscale" and (seen[-1].image == 77).all()
    assert seen[-1].image.shape == (24, 32, 3) and win.doc.history[-1].images[0].shape == (96, 128, 3)
