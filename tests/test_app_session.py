"""The window over a working session (pytest-qt, offscreen): the generation queue, recent files, the history's
context menu, comparing a result with the canvas, and the models a job used."""
import functools

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("pytestqt")
from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402
from test_app_widgets import at, drag, make_window  # noqa: E402,F401

from app import project  # noqa: E402
from app.demo import fake_runner  # noqa: E402
from app.document import Document  # noqa: E402
from engine import api  # noqa: E402


def test_generate_while_busy_queues_the_canvas_as_it_was_and_escape_empties_the_queue(make_window, qtbot):
    seen = []

    def runner(request, ctx, cache):
        seen.append(request.prompt)
        return fake_runner(request, ctx, cache, step_s=0.02)

    win = make_window(runner=runner)
    win.doc.set_param("steps", 10)
    formats = []
    win.bridge.progress.connect(lambda ev: formats.append(win.generate_bar.progress.format()))
    for prompt in ("a lighthouse", "a harbour", "a ship"):
        win.doc.set_param("prompt", prompt)
        win.generate()
    assert len(win.queue) == 2 and "Queued: 2" in win.statusBar().currentMessage()
    qtbot.waitUntil(lambda: len(win.doc.history) == 3, timeout=15000)
    assert seen == ["a lighthouse", "a harbour", "a ship"] and not win.queue
    assert [h.parameters.splitlines()[0] for h in win.doc.history] == seen
    assert any("2 queued" in f for f in formats) and "queued" not in formats[-1]
    for prompt in ("one", "two", "three"):
        win.doc.set_param("prompt", prompt)
        win.generate()
    qtbot.waitUntil(lambda: len(seen) == 4, timeout=5000)
    with qtbot.waitSignal(win.bridge.cancelled, timeout=5000):
        QTest.keyClick(win, Qt.Key.Key_Escape)
    qtbot.wait(300)
    assert seen[3:] == ["one"] and not win.queue and not win.bridge.busy and len(win.doc.history) == 3


def test_open_recent_lists_opened_and_saved_files_and_opens_them(make_window, tmp_path, monkeypatch):
    from PySide6.QtGui import QDesktopServices

    from app.settings import load_settings, save_settings

    win = make_window()
    proj, img = tmp_path / "scene.lcproj", tmp_path / "photo.png"
    project.save(Document(64, 48), proj)
    Image.fromarray(np.full((32, 40, 3), 90, np.uint8)).save(img)
    win.open_path(str(proj))
    win.open_path(str(img))
    assert win.settings.recent_files == [str(img.resolve()), str(proj.resolve())]
    img.unlink()
    win.fill_recent_menu()
    names = [a.text() for a in win.recent_menu.actions() if not a.isSeparator()]
    assert names == ["scene.lcproj", "Clear the list"]
    win.doc.set_param("prompt", "unsaved")  # a clean project reopens without asking
    win.doc.mark_clean()
    win.recent_menu.actions()[0].trigger()
    assert win.doc.path == str(proj) and (win.doc.width, win.doc.height) == (64, 48)
    save_settings(win.settings, tmp_path / "s.json")
    assert load_settings(tmp_path / "s.json").recent_files == win.settings.recent_files
    (tmp_path / "bad.json").write_text('{"recent_files": ["a.png", 3, null]}')
    assert load_settings(tmp_path / "bad.json").recent_files == ["a.png"]
    win.clear_recent()
    assert win.settings.recent_files == []
    opened = []
    monkeypatch.setattr(QDesktopServices, "openUrl", lambda url: opened.append(url.toLocalFile()) or True)
    assert win.open_outputs_folder() and opened == [str(tmp_path / "out")] and (tmp_path / "out").is_dir()


def test_status_bar_names_every_model_a_job_used(make_window, qtbot):
    def two_pass(request, ctx, cache):
        for family in ("world-semantic", "world-sr4", "world-sr4"):
            ctx.emit(api.Started(ctx.job_id, device="cpu", dtype="float32", family=family))
        return api.Result(ctx.job_id, (np.zeros((96, 128, 3), np.uint8),), "p", (1,), 0.1)

    win = make_window(runner=two_pass)
    with qtbot.waitSignal(win.bridge.result, timeout=5000):
        win.generate()
    assert win.device_label.text() == "cpu · float32 · world-semantic + world-sr4"
    win.bridge.engine._runner = functools.partial(fake_runner, step_s=0.001)
    with qtbot.waitSignal(win.bridge.result, timeout=5000):
        win.generate()
    assert win.device_label.text() == "cpu (demo) · float32 · demo"


def test_history_context_menu_copies_and_upscales_a_result(make_window, qtbot):
    from PySide6.QtGui import QGuiApplication

    from app.files import from_qimage

    seen = []
    win = make_window(runner=lambda request, ctx, cache: seen.append(request) or fake_runner(request, ctx, cache,
                                                                                            step_s=0.001))
    with qtbot.waitSignal(win.bridge.result, timeout=5000):
        win.generate()
    result = win.doc.history[0].images[0]
    menu = win.history_strip.context_menu(win.history_strip.list.item(0))
    actions = {a.text(): a for a in menu.actions() if not a.isSeparator()}
    assert list(actions) == ["Apply to canvas", "Copy image", "Upscale x4", "Variations", "Copy parameters", "Discard"]
    actions["Copy image"].trigger()
    assert np.array_equal(np.array(from_qimage(QGuiApplication.clipboard().image()).convert("RGB")), result)
    with qtbot.waitSignal(win.bridge.result, timeout=5000):
        actions["Upscale x4"].trigger()
    assert seen[-1].task == "upscale" and np.array_equal(seen[-1].image, result)
    assert win.doc.history[-1].images[0].shape == (4 * 96, 4 * 128, 3) and np.array_equal(win.doc.image, result)


def test_h_flips_between_the_result_and_the_canvas_under_it(make_window, qtbot):
    win = make_window()
    win.doc.set_image(np.full((96, 128, 3), 20, np.uint8))
    with qtbot.waitSignal(win.bridge.result, timeout=5000):
        win.generate()
    win.canvas.setFocus()
    shown = lambda: win.canvas.grab().toImage().pixelColor(at(win.canvas, 64, 10)).red()  # noqa: E731
    result = int(win.doc.history[0].images[0][10, 64, 0])
    assert abs(shown() - result) <= 2 and abs(result - 20) > 10
    QTest.keyClick(win.canvas, Qt.Key.Key_H)
    assert abs(shown() - 20) <= 2 and not win.preview_action.isChecked()
    QTest.keyClick(win.canvas, Qt.Key.Key_H)
    assert abs(shown() - result) <= 2


def test_a_seamless_canvas_shows_dimmed_copies_of_itself_along_its_axes(make_window):
    win = make_window()
    red = np.zeros((96, 128, 3), np.uint8)
    red[..., 0] = 250
    win.doc.set_image(red)
    win.canvas.fit()
    win.canvas.zoom_by(0.5)
    win.canvas._center()

    def colour(x, y):
        return win.canvas.grab().toImage().pixelColor(at(win.canvas, x, y))

    beside, above = (-10, 48), (64, -10)
    assert colour(*beside).red() < 200 and colour(*above).red() < 200
    win.task_options.seamless.setCurrentIndex(win.task_options.seamless.findData("x"))
    assert win.doc.params.seamless == "x"
    left, top = colour(*beside), colour(*above)
    assert left.red() > 150 and left.red() > left.green() + 80 and top.red() < 200
    win.doc.set_param("seamless", "xy")
    assert colour(*above).red() > 150


def test_variations_of_a_result_queue_four_jobs_at_its_seed_with_other_variation_seeds(make_window, qtbot):
    from app.demo import fake_runner

    seen = []

    def runner(request, ctx, cache):
        seen.append(request)
        return fake_runner(request, ctx, cache, step_s=0.001)

    win = make_window(runner=runner)
    with qtbot.waitSignal(win.bridge.result, timeout=5000):
        win.generate()
    seed = win.doc.history[0].seeds[0]
    menu = win.history_strip.context_menu(win.history_strip.list.item(0))
    vary = next(a for a in menu.actions() if a.text() == "Variations")
    vary.trigger()
    qtbot.waitUntil(lambda: len(win.doc.history) == 5 and not win.bridge.busy, timeout=10000)
    varied = seen[1:]
    assert [r.seed for r in varied] == [seed] * 4 and all(r.variation_strength == 0.25 for r in varied)
    assert len({r.variation_seed for r in varied}) == 4
    assert "Variation seed strength: 0.25" in win.doc.history[-1].parameters
    assert win.params_panel.variation.value() == 0.25 and win.doc.params.seed_mode == "fixed"
    win.params_panel.variation.setValue(0.0)
    assert win.doc.to_request().variation_strength == 0.0 and not win.params_panel.variation_seed.isEnabled()


def test_the_colour_brush_sketches_in_its_colour_and_alt_click_picks_one(make_window, monkeypatch):
    from PySide6.QtGui import QColor
    from PySide6.QtWidgets import QColorDialog

    win = make_window()
    monkeypatch.setattr(QColorDialog, "getColor", lambda *a, **k: QColor(20, 160, 60))
    win.colour_action.trigger()
    assert win.canvas.tool == "paint" and win.canvas.paint_colour == (20, 160, 60)
    win.canvas.set_brush(radius=4, hardness=1.0)
    drag(win.canvas, [(20, 20), (60, 20)])
    assert tuple(win.doc.image[20, 40]) == (20, 160, 60) and len(win.doc.undo_stack.done) == 1
    assert "img2img" in win.params_panel.task.itemText(0)
    QTest.mouseClick(win.canvas, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.AltModifier, at(win.canvas, 100, 80))
    assert win.canvas.paint_colour == tuple(int(v) for v in win.doc.image[80, 100])
    assert len(win.doc.undo_stack.done) == 1, "picking a colour paints nothing"
