"""Widget tests (pytest-qt, offscreen): canvas tools, generation through the bridge, cancel, failure, drop, files."""
import functools
import time

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

pytest.importorskip("pytestqt")
from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QUrl  # noqa: E402
from PySide6.QtGui import QDropEvent  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402
from PySide6.QtWidgets import QMessageBox  # noqa: E402

from app import project  # noqa: E402
from app.demo import fake_runner  # noqa: E402
from app.document import Document  # noqa: E402
from app.main_window import MainWindow  # noqa: E402
from app.parameters import parse_parameters, read_png_parameters  # noqa: E402
from app.settings import AppSettings  # noqa: E402
from engine import api  # noqa: E402

NAMES = ("sky", "tree", "grass", "water", "rock", "sand")
COLORS = ((150, 195, 230), (30, 110, 40), (80, 135, 50), (40, 105, 125), (110, 105, 105), (205, 185, 135))


@pytest.fixture
def make_window(qtbot, tmp_path, monkeypatch):
    monkeypatch.setenv("LATENT_CANVAS_DATA_DIR", str(tmp_path / "data"))
    model = api.ModelInfo(path=str(tmp_path / "sem.safetensors"), name="sem", family="semantic_synthesis256",
                          tasks=("semantic",), label_names=NAMES, label_colors=COLORS)
    monkeypatch.setattr(api, "list_models", lambda extra=(): [model])
    monkeypatch.setattr(api, "default_model_for", lambda task: model if task in model.tasks else None)
    windows = []

    def make(runner=None, sized=True, **settings):
        win = MainWindow(runner=runner or functools.partial(fake_runner, step_s=0.005),
                         settings=AppSettings(outputs_dir=str(tmp_path / "out"), **settings),
                         recovery=project.Recovery(tmp_path / "rec"), persist_settings=False)
        win.confirm_discard = lambda: True
        qtbot.addWidget(win)
        with qtbot.waitActive(win):
            win.show()
            win.activateWindow()
        if sized:
            win.doc.resize(128, 96)
            win.doc.undo_stack.clear()
        win.canvas.fit()
        windows.append(win)
        return win

    yield make
    for win in windows:
        win.confirm_discard = lambda: True


def at(canvas, x, y) -> QPoint:
    return canvas.to_widget(x, y).toPoint()


def test_a_blank_canvas_takes_its_models_size_until_the_user_sizes_it(make_window, tmp_path):
    assert [api.suggested_size(s) for s in (0, 32, 64, 256, 512, 768)] == [0, 128, 256, 256, 512, 768]
    win = make_window(sized=False)
    sd = api.ModelInfo(path=str(tmp_path / "sd.safetensors"), name="sd", family="sd2", tasks=("txt2img",), image_size=768)
    win.doc.set_param("model", sd.path)
    win._model_changed(sd)
    assert (win.doc.width, win.doc.height) == (768, 768) and not win.doc.can_undo
    assert (win.params_panel.width_.value(), win.params_panel.height_.value()) == (768, 768)
    win._model_changed(api.ModelInfo(path=sd.path, name="small", family="world-txt2img", tasks=("txt2img",), image_size=64))
    assert (win.doc.width, win.doc.height) == (256, 256)
    win.doc.resize(320, 192)
    win._model_changed(sd)
    assert (win.doc.width, win.doc.height) == (320, 192)
    win.new_document()
    win._model_changed(sd)
    assert (win.doc.width, win.doc.height) == (320, 192) and win.doc.is_blank()


def test_a_small_model_enlarges_its_composition_with_the_upscaler_until_the_user_chooses(make_window, tmp_path,
                                                                                        monkeypatch):
    """Models trained below 256 px, which get a 4x canvas, enlarge their composition with the x4 upscaler model and
    skip the repaint; the others keep Lanczos and a 0.5 repaint; a choice of the user's is kept."""
    assert api.suggested_hires(64) == ("model", 0.0) and api.suggested_hires(64, have_upscaler=False) == ("lanczos", 0.5)
    assert api.suggested_hires(512) == api.suggested_hires(256) == ("lanczos", 0.5)
    win = make_window(sized=False)
    small = api.ModelInfo(path=str(tmp_path / "s.safetensors"), name="small", family="world-txt2img", tasks=("txt2img",),
                          image_size=64)
    sd = api.ModelInfo(path=str(tmp_path / "sd.safetensors"), name="sd", family="sd1", tasks=("txt2img",), image_size=512)
    hires = lambda: (win.doc.params.hires_upscaler, win.doc.params.hires_strength)  # noqa: E731
    monkeypatch.setattr(api, "default_model_for", lambda task: small if task == "upscale" else None)
    win.doc.set_param("model", small.path)
    win._model_changed(small)
    assert hires() == ("model", 0.0) and win.task_options.hires_upscaler.currentData() == "model"
    assert win.doc.to_request(win.settings).hires_upscaler == "model"
    win._model_changed(sd)
    assert hires() == ("lanczos", 0.5)
    win.new_document()
    win.doc.set_param("model", small.path)
    win._model_changed(small)
    assert hires() == ("model", 0.0)
    win.task_options.hires_strength.setValue(0.3)
    win._model_changed(sd)
    assert hires() == ("model", 0.3)


def drag(canvas, points, button=Qt.MouseButton.LeftButton):
    QTest.mousePress(canvas, button, Qt.KeyboardModifier.NoModifier, at(canvas, *points[0]))
    for p in points[1:]:
        QTest.mouseMove(canvas, at(canvas, *p))
    QTest.mouseRelease(canvas, button, Qt.KeyboardModifier.NoModifier, at(canvas, *points[-1]))


def test_mask_stroke_by_mouse_is_one_undo_step(make_window):
    win = make_window()
    win.tool_actions["mask"].trigger()
    win.canvas.set_brush(radius=5, hardness=1.0)
    drag(win.canvas, [(20, 20), (60, 40), (100, 70)])
    m = win.doc.mask
    assert m[20, 20] > 200 and m[40, 60] > 200 and m[70, 100] > 200 and m[90, 10] == 0
    assert len(win.doc.undo_stack.done) == 1 and win.windowTitle().startswith("*")
    assert "inpaint" in win.params_panel.task.itemText(0)
    win.undo_action.trigger()
    assert not win.doc.mask.any()
    win.redo_action.trigger()
    assert win.doc.mask[40, 60] > 200
    QTest.keyClick(win.canvas, Qt.Key.Key_BracketRight)
    assert win.canvas.brush_radius > 5 and "brush 6" in win.brush_label.text()


def test_box_tool_labels_moves_and_deletes(make_window):
    win = make_window()
    win.canvas.ask_box_label = lambda: ("tree", "an old oak")
    win.tool_actions["box"].trigger()
    drag(win.canvas, [(16, 12), (40, 30), (64, 48)])
    assert len(win.doc.boxes) == 1
    box = win.doc.boxes[0]
    assert box.label == "tree" and box.prompt == "an old oak"
    assert np.allclose(box.rect, (16 / 128, 12 / 96, 64 / 128, 48 / 96), atol=0.03)
    assert win.doc.task() == "layout" and win.canvas.selected_box == 0
    win.tool_actions["move"].trigger()
    drag(win.canvas, [(40, 30), (60, 40), (72, 54)])
    moved = win.doc.boxes[0].rect
    assert moved[0] == pytest.approx(box.rect[0] + 32 / 128, abs=0.03) and len(win.doc.undo_stack.done) == 2
    win.canvas.setFocus()
    QTest.keyClick(win.canvas, Qt.Key.Key_Delete)
    assert win.doc.boxes == []
    win.doc.undo()
    assert win.doc.boxes[0].rect == moved


def test_semantic_brush_and_fill_with_palette(make_window):
    win = make_window()
    assert win.palette.names == NAMES and win.palette.list.count() == len(NAMES)
    assert [tuple(c) for c in win.palette.colors] == list(COLORS)  # the model's own class colours
    assert [tuple(c) for c in win.canvas.colors[:len(COLORS)]] == list(COLORS)
    win.palette.search.setText("wat")
    visible = [win.palette.list.item(i).text() for i in range(win.palette.list.count()) if not win.palette.list.item(i).isHidden()]
    assert len(visible) == 1 and "water" in visible[0]
    win.palette.select(3)
    assert win.canvas.current_label == 3 and win.canvas.tool == "semantic"
    win.canvas.set_brush(radius=3)
    drag(win.canvas, [(0, 50), (127, 50)])
    assert (win.doc.labels[50] == 3).all()
    win.palette.select(0)
    win.tool_actions["fill"].trigger()
    QTest.mouseClick(win.canvas, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, at(win.canvas, 10, 10))
    assert (win.doc.labels[:45] == 0).all() and (win.doc.labels[56:] == -1).all()
    assert win.doc.task() == "semantic" and len(win.doc.undo_stack.done) == 2
    req = win.doc.to_request()
    assert req.labels is not None and req.labels[10, 10] == 0


def test_ctrl_enter_generates_with_progress_and_preview(make_window, qtbot, tmp_path):
    win = make_window()
    win.doc.set_param("prompt", "a lighthouse")
    win.doc.set_param("steps", 6)
    win.doc.set_param("seed_mode", "fixed")
    win.doc.set_param("seed", 42)
    seen = {"progress": [], "preview": [], "bar": []}
    win.bridge.progress.connect(lambda ev: seen["progress"].append((ev.step, ev.total)))
    win.bridge.preview.connect(lambda ev: seen["preview"].append(win.canvas.preview is ev.image))
    win.bridge.progress.connect(lambda ev: seen["bar"].append((win.generate_bar.progress.value(), win.generate_bar.progress.format())))
    with qtbot.waitSignal(win.bridge.result, timeout=10000):
        QTest.keyClick(win, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)
        assert win.bridge.busy and win.generate_bar.cancel_button.isEnabled()
    assert seen["progress"][-1] == (6, 6) and len(seen["progress"]) == 6
    assert seen["preview"] and all(seen["preview"])
    assert seen["bar"][-1][0] == 6 and "step 6/6" in seen["bar"][-1][1]
    assert len(win.doc.history) == 1 and win.doc.history[0].seeds == [42]
    assert win.canvas.preview is not None and win.canvas.preview.shape == (96, 128, 3)
    assert "cpu (demo)" in win.device_label.text() and win.generate_bar.generate_button.isEnabled()
    assert win.history_strip.list.count() == 1
    out = win.written[0]
    assert out.exists() and parse_parameters(read_png_parameters(out))["seed"] == 42
    assert (tmp_path / "rec" / "autosave.lcproj").exists()
    win.history_strip.apply_button.click()
    assert win.doc.has_image and np.array_equal(win.doc.image, win.doc.history[0].images[0]) and win.canvas.preview is None


def _slow_runner(request, ctx, cache):
    ctx.emit(api.Started(ctx.job_id, "cpu", "float32", "test"))
    for step in range(1, 400):
        time.sleep(0.01)
        ctx.progress(step, 400)
    raise AssertionError("not cancelled")


def test_escape_cancels(make_window, qtbot):
    win = make_window(runner=_slow_runner)
    before = win.doc.image.copy()
    with qtbot.waitSignal(win.bridge.progress, timeout=5000):
        win.generate()
    with qtbot.waitSignal(win.bridge.cancelled, timeout=5000) as sig:
        QTest.keyClick(win, Qt.Key.Key_Escape)
    assert 0 < sig.args[0].step < 400
    assert not win.bridge.busy and win.generate_bar.generate_button.isEnabled()
    assert "cancelled" in win.generate_bar.progress.format() and win.doc.history == []
    assert np.array_equal(win.doc.image, before)


@pytest.mark.parametrize("error,expect", [(api.EngineError("checkpoint is corrupt"), "checkpoint is corrupt"),
                                          (RuntimeError("CUDA out of memory. Tried"), "Out of memory")])
def test_failed_job_shows_message_and_keeps_canvas(make_window, qtbot, error, expect):
    def broken(request, ctx, cache):
        ctx.progress(1, 5)
        ctx.preview(1, np.zeros((96, 128, 3), np.uint8))
        raise error

    win = make_window(runner=broken)
    win.doc.stroke("mask", [(30, 30)], radius=8)
    image, mask = win.doc.image.copy(), win.doc.mask.copy()
    with qtbot.waitSignal(win.bridge.failed, timeout=5000):
        win.generate()
    assert expect in win.last_error
    boxes = [w for w in win.findChildren(QMessageBox) if w.isVisible()]
    assert boxes and expect in boxes[-1].text()
    assert np.array_equal(win.doc.image, image) and np.array_equal(win.doc.mask, mask)
    assert win.canvas.preview is None and win.generate_bar.generate_button.isEnabled()
    with qtbot.waitSignal(win.bridge.failed, timeout=5000):
        win.generate()


def test_slot_exception_is_reported_not_fatal(make_window, monkeypatch):
    win = make_window()
    monkeypatch.setattr(win.doc, "to_request", lambda *a, **k: (_ for _ in ()).throw(ValueError("bad size")))
    assert win.generate() is None
    assert "bad size" in win.last_error and not win.bridge.busy


def _png_with_parameters(path, size, text):
    info = PngInfo()
    info.add_text("parameters", text)
    Image.fromarray(np.full((size[1], size[0], 3), 90, np.uint8)).save(path, pnginfo=info)


def test_dropped_image_restores_parameters(make_window, tmp_path):
    win = make_window()
    path = tmp_path / "old.png"
    _png_with_parameters(path, (80, 48), "a red barn\nNegative prompt: fog\nSteps: 17, Sampler: plms, CFG scale: 6.5, Seed: 321, Size: 80x48")
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(path))])
    ev = QDropEvent(QPointF(50, 50), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    win.dropEvent(ev)
    d = win.doc
    assert d.has_image and (d.width, d.height) == (80, 48) and d.image[0, 0, 0] == 90
    assert (d.params.prompt, d.params.negative_prompt, d.params.steps, d.params.sampler) == ("a red barn", "fog", 17, "plms")
    assert d.params.seed == 321 and d.params.seed_mode == "fixed"
    assert win.prompt_panel.prompt.toPlainText() == "a red barn" and win.params_panel.steps.value() == 17


def test_copy_and_paste_the_canvas_image_through_the_clipboard(make_window, qtbot):
    """Ctrl+C copies what the canvas shows; Ctrl+V on the canvas pastes a picture as the source layer in one undo
    step; in the prompt box Ctrl+V still pastes text; a clipboard without an image changes nothing. Ctrl+Shift+V lays
    the picture over the canvas, centred on the region: it drags into place, Enter lays it (one undo step), Esc
    removes it."""
    from PySide6.QtGui import QGuiApplication

    from app.canvas import to_qimage
    from app.files import from_qimage

    win = make_window()
    board = QGuiApplication.clipboard()
    first = np.random.default_rng(0).integers(0, 255, (96, 128, 3), np.uint8)
    win.doc.set_image(first)
    win.canvas.setFocus()
    QTest.keyClick(win.canvas, Qt.Key.Key_C, Qt.KeyboardModifier.ControlModifier)
    assert np.array_equal(np.array(from_qimage(board.image()).convert("RGB")), first)
    picture = np.zeros((24, 40, 3), np.uint8)
    picture[:, :, 0] = np.arange(40, dtype=np.uint8) * 6
    board.setImage(to_qimage(picture))
    QTest.keyClick(win.canvas, Qt.Key.Key_V, Qt.KeyboardModifier.ControlModifier)
    assert (win.doc.width, win.doc.height) == (40, 24) and np.array_equal(win.doc.image, picture)
    win.doc.undo()
    assert np.array_equal(win.doc.image, first)
    board.setText("a blue star")
    win.prompt_panel.prompt.setFocus()
    QTest.keyClick(win.prompt_panel.prompt, Qt.Key.Key_V, Qt.KeyboardModifier.ControlModifier)
    assert "a blue star" in win.prompt_panel.prompt.toPlainText() and np.array_equal(win.doc.image, first)
    assert not win.paste_image() and np.array_equal(win.doc.image, first)
    assert "no image" in win.statusBar().currentMessage()
    assert not win.paste_into() and "no picture" in win.statusBar().currentMessage()
    board.setImage(to_qimage(picture))
    win.canvas.setFocus()
    steps = len(win.doc.undo_stack.done)
    QTest.keyClick(win.canvas, Qt.Key.Key_V, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    assert (win.doc.floating.x, win.doc.floating.y) == (44, 36) and np.array_equal(win.doc.image, first)
    shown = win.canvas.grab().toImage()
    assert shown.pixelColor(at(win.canvas, 44 + 39, 36 + 12)).red() == picture[12, 39, 0]
    drag(win.canvas, [(60, 48), (40, 60), (30, 70)])  # grabbed inside the picture, dropped 30 left and 22 down
    assert (win.doc.floating.x, win.doc.floating.y) == (14, 58) and np.array_equal(win.doc.image, first)
    win.doc.set_task_override("img2img")
    assert np.array_equal(win.doc.to_request().image[58:82, 14:54], picture)  # the request sees what the canvas shows
    QTest.keyClick(win.canvas, Qt.Key.Key_Return)
    assert win.doc.floating is None and len(win.doc.undo_stack.done) == steps + 1
    assert np.array_equal(win.doc.image[58:82, 14:54], picture) and np.array_equal(win.doc.image[:58], first[:58])
    win.doc.undo()
    assert np.array_equal(win.doc.image, first)
    win.paste_into()
    QTest.keyClick(win, Qt.Key.Key_Escape)
    assert win.doc.floating is None and np.array_equal(win.doc.image, first) and len(win.doc.undo_stack.done) == steps
    win.paste_into()
    with qtbot.waitSignal(win.bridge.result, timeout=10000):
        win.generate()
    assert win.doc.floating is None and np.array_equal(win.doc.image[36:60, 44:84], picture)


def test_a_floating_paste_scales_by_its_corners_keeping_its_aspect(make_window):
    from PySide6.QtGui import QGuiApplication

    from app import raster
    from app.canvas import to_qimage

    win = make_window()
    first = np.full((96, 128, 3), 255, np.uint8)
    win.doc.set_image(first)
    picture = np.random.default_rng(3).integers(0, 255, (24, 40, 3), np.uint8)
    QGuiApplication.clipboard().setImage(to_qimage(picture))
    win.paste_into()
    assert (win.doc.floating.x, win.doc.floating.y, *win.doc.floating.size) == (44, 36, 40, 24)
    drag(win.canvas, [(84, 60), (95, 62), (104, 66)])  # the bottom-right handle, 1.5x wider (taller is less)
    assert (win.doc.floating.x, win.doc.floating.y, *win.doc.floating.size) == (44, 36, 60, 36)
    drag(win.canvas, [(44, 36), (54, 42), (64, 48)])  # the top-left handle: scaled about the bottom-right corner
    assert (win.doc.floating.x, win.doc.floating.y, *win.doc.floating.size) == (64, 48, 40, 24)
    drag(win.canvas, [(104, 72), (114, 78), (124, 84)])
    assert (win.doc.floating.x, win.doc.floating.y, *win.doc.floating.size) == (64, 48, 60, 36)
    drag(win.canvas, [(80, 60), (40, 24)])  # inside: moved
    assert (win.doc.floating.x, win.doc.floating.y, *win.doc.floating.size) == (24, 12, 60, 36)
    assert win.doc.anchor()
    assert np.array_equal(win.doc.image[12:48, 24:84], raster.resize_smooth(picture, 60, 36))
    assert (win.doc.image[:12] == 255).all() and (win.doc.image[48:] == 255).all()


def test_extend_canvas_action_masks_the_new_area_for_inpainting_and_crop_undoes_it(make_window):
    """Edit > Extend canvas: the dialog's pads (a quarter of the width on the right by default) grow the canvas in one
    undo step, the task follows the new mask (an override is dropped), and a cancelled dialog changes nothing.
    Edit > Crop to generation region cuts the canvas to the region, and asks for one when there is none."""
    from app.dialogs import ExtendDialog

    win = make_window()
    assert ExtendDialog(128, 96).pads() == (0, 0, 32, 0)
    win.doc.set_task_override("txt2img")
    win.ask_extend = lambda: (16, 0, 32, 8)
    assert win.extend_canvas()
    assert (win.doc.width, win.doc.height) == (176, 104) and win.doc.task() == "inpaint"
    assert "176×104" in win.canvas.region_text and "inpaint" in win.canvas.region_text
    win.ask_extend = lambda: None
    assert not win.extend_canvas() and win.doc.width == 176
    win.doc.undo()
    assert (win.doc.width, win.doc.height) == (128, 96)
    assert not win.crop_canvas() and "generation region" in win.statusBar().currentMessage()
    win.doc.set_region((16, 8, 64, 48))
    assert win.crop_canvas() and (win.doc.width, win.doc.height) == (64, 48) and win.doc.region is None


def test_huge_image_asks_before_downscaling(make_window, tmp_path):
    win = make_window(max_image_side=64)
    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((100, 200, 3), np.uint8)).save(path)
    asked = []
    win.ask = lambda title, q: asked.append(q) or True
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(path))])
    assert win.handle_drop(mime)
    assert asked and "200×100" in asked[0] and max(win.doc.width, win.doc.height) <= 64
    win.ask = lambda title, q: False
    win.handle_drop(mime)
    assert (win.doc.width, win.doc.height) == (200, 100)


def test_save_open_and_unsaved_prompt(make_window, tmp_path, monkeypatch):
    win = make_window()
    win.confirm_discard = MainWindow.confirm_discard.__get__(win)
    win.doc.stroke("mask", [(10, 10)], radius=4)
    target = tmp_path / "p.lcproj"
    monkeypatch.setattr("app.files.QFileDialog.getSaveFileName", lambda *a, **k: (str(target), ""))
    assert win.save() and target.exists() and not win.doc.dirty
    win.doc.stroke("mask", [(50, 50)], radius=4)
    monkeypatch.setattr("app.files.QMessageBox.question", lambda *a, **k: QMessageBox.StandardButton.Cancel)
    win.open_path(str(target))
    assert win.doc.mask[50, 50] > 0
    assert not win.close() and win.isVisible()
    monkeypatch.setattr("app.files.QMessageBox.question", lambda *a, **k: QMessageBox.StandardButton.Discard)
    win.open_path(str(target))
    assert win.doc.mask[50, 50] == 0 and win.doc.mask[10, 10] > 0 and win.doc.path == str(target)


def test_recovery_offer_restores_autosave(make_window, tmp_path):
    crashed = project.Recovery(tmp_path / "rec")
    crashed.start()
    doc = Document(64, 40)
    doc.stroke("labels", [(5, 5)], radius=3, value=4)
    crashed.autosave(doc)
    win = make_window()
    win.ask = lambda title, q: True
    assert win.offer_recovery()
    assert (win.doc.width, win.doc.height) == (64, 40) and win.doc.labels[5, 5] == 4 and win.doc.dirty


def test_a_layout_from_the_prompt_alone_shows_the_planned_boxes(make_window, qtbot):
    def planning_runner(request, ctx, cache):
        res = fake_runner(request, ctx, cache, step_s=0.002)
        if request.task == "layout" and not request.boxes:
            return api.Result(res.job_id, res.images, res.parameters, res.seeds, res.elapsed_s,
                              boxes=(api.Box("red circle", (0.25, 0.25, 0.5, 0.75)),))
        return res

    seen = []
    win = make_window(runner=lambda r, ctx, cache: seen.append(r) or planning_runner(r, ctx, cache))
    win.doc.set_param("prompt", "a red circle on grass")
    win.doc.set_task_override("layout")
    assert win.task_options.best_of.isEnabled() and win.task_options.best_of.value() == 4
    win.doc.set_param("batch_size", 2)
    assert not win.task_options.best_of.isEnabled()
    win.doc.set_param("batch_size", 1)
    assert win.task_options.best_of.isEnabled()
    win.task_options.best_of.setValue(3)
    assert win.task_options.sketch_strength.isEnabled() and win.task_options.sketch_strength.value() == 0.6
    win.task_options.sketch_strength.setValue(0.45)
    win.generate()
    qtbot.waitUntil(lambda: not win.bridge.busy and bool(win.doc.boxes), timeout=10000)
    assert seen[0].boxes == [] and seen[0].prompt == "a red circle on grass" and seen[0].best_of == 3
    assert seen[0].sketch_strength == pytest.approx(0.45)
    assert parse_parameters("a red circle\nSteps: 3, Task: layout, Sketch strength: 0.6")["sketch_strength"] == 0.6
    assert not win.task_options.best_of.isEnabled() and win.task_options.sketch_strength.isEnabled()
    assert [(b.label, b.rect) for b in win.doc.boxes] == [("red circle", (0.25, 0.25, 0.5, 0.75))]
    assert "planned 1 boxes" in win.statusBar().currentMessage()
    win.generate()
    qtbot.waitUntil(lambda: not win.bridge.busy and len(seen) == 2, timeout=10000)
    assert [b.label for b in seen[1].boxes] == ["red circle"] and len(win.doc.boxes) == 1 and seen[1].best_of == 1
    assert seen[1].sketch_strength == pytest.approx(0.45), "boxes drawn again from the same sketch"
