"""Widget tests (pytest-qt, offscreen): task options, region prompts, the generation-region tool, the "Add model..."
file dialog, the Settings dialog and the app icon."""
from pathlib import Path

import numpy as np
import pytest

from app.parameters import format_parameters, parse_parameters

pytest.importorskip("pytestqt")
from PySide6.QtCore import Qt  # noqa: E402
from PySide6.QtGui import QImage  # noqa: E402
from PySide6.QtWidgets import QApplication, QDialog, QDockWidget, QFileDialog, QPushButton  # noqa: E402
from test_app_widgets import drag, make_window  # noqa: E402,F401

from app import icon  # noqa: E402
from app.demo import fake_image, fake_runner  # noqa: E402
from app.dialogs import SettingsDialog  # noqa: E402
from app.settings import load_settings  # noqa: E402
from engine import api  # noqa: E402


def _noise(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def _capturing(seen):
    def runner(request, ctx, cache):
        seen.append(request)
        return fake_runner(request, ctx, cache, step_s=0.002)

    return runner


def test_task_options_panel_sets_the_request_and_an_app_png_restores_them(make_window, qtbot):
    win = make_window()
    opts = win.task_options
    assert not opts.noise_level.isEnabled() and not opts.mask_grow.isEnabled()
    assert opts.hires.isEnabled() and opts.hires_strength.isEnabled()
    assert opts.hires_upscaler.isEnabled() and win.doc.to_request(win.settings).hires_upscaler == "lanczos"
    opts.hires_upscaler.setCurrentIndex(opts.hires_upscaler.findData("model"))
    opts.hires_strength.setValue(0.0)
    assert opts.hires_strength.text() == "off (only enlarge)"
    req = win.doc.to_request(win.settings)
    assert (req.hires_upscaler, req.hires_strength) == ("model", 0.0)
    assert parse_parameters(format_parameters(req))["hires_upscaler"] == "model"
    opts.hires_strength.setValue(0.35)
    opts.hires.setCurrentIndex(opts.hires.findData("off"))
    assert not opts.hires_strength.isEnabled() and not opts.hires_upscaler.isEnabled()
    req = win.doc.to_request(win.settings)
    assert (req.hires, req.hires_strength) == ("off", 0.35)
    opts.hires.setCurrentIndex(opts.hires.findData("dilated"))
    assert not opts.hires_strength.isEnabled() and not opts.hires_upscaler.isEnabled()
    assert win.doc.to_request(win.settings).hires == "dilated"
    opts.hires.setCurrentIndex(opts.hires.findData("auto"))
    win.doc.stroke("mask", [(20, 20)], radius=4)
    assert opts.hires.isEnabled() and opts.hires_upscaler.isEnabled() and not opts.hires_strength.isEnabled()
    assert opts.mask_grow.isEnabled() and not opts.noise_level.isEnabled()
    opts.mask_grow.setValue(5)
    opts.mask_feather.setValue(9)
    opts.inpaint_crop.setChecked(True)
    req = win.doc.to_request(win.settings)
    assert (req.task, req.mask_grow, req.mask_feather, req.inpaint_crop) == ("inpaint", 5, 9, True)
    win.doc.clear_layer("mask")
    win.doc.set_image(_noise(96, 128))
    win.params_panel.upscale.setChecked(True)
    assert win.doc.task() == "upscale" and opts.noise_level.isEnabled() and not opts.refine_model.isEnabled()
    assert opts.colour_fix.isEnabled() and opts.colour_fix.isChecked()
    opts.colour_fix.setChecked(False)
    assert win.doc.to_request(win.settings).colour_fix is False
    opts.colour_fix.setChecked(True)
    opts.noise_level.setValue(120)
    opts.upscaler.setCurrentIndex(opts.upscaler.findData("esrgan"))
    assert not opts.colour_fix.isEnabled()
    opts.refine_strength.setValue(0.3)
    assert opts.refine_model.isEnabled()
    req = win.doc.to_request(win.settings)
    assert (req.noise_level, req.upscaler, req.refine_strength, req.refine_model) == (120, "esrgan", 0.3, "default")
    win.doc.set_param("seed_mode", "fixed")
    win.doc.set_param("seed", 11)
    with qtbot.waitSignal(win.bridge.result, timeout=10000):
        win.generate()
    other = make_window()
    other.open_path(str(win.written[0]))
    p = other.doc.params
    assert (p.noise_level, p.upscaler, p.refine_strength, p.seed) == (120, "esrgan", 0.3, 11)
    assert other.doc.task() == "upscale" and other.task_options.noise_level.value() == 120
    assert other.task_options.refine_strength.value() == pytest.approx(0.3)


def test_region_prompts_panel_edits_class_and_box_prompts(make_window):
    win = make_window()
    table = win.region_prompts.table
    win.doc.stroke("labels", [(10, 10)], radius=3, value=3)
    win.doc.stroke("labels", [(60, 60)], radius=3, value=1)
    assert table.rowCount() == 2 and "tree" in table.item(0, 0).text() and "water" in table.item(1, 0).text()
    win.region_prompts.set_prompt(1, "a calm lake at dawn")
    assert win.doc.params.label_prompts == {3: "a calm lake at dawn"}
    assert win.doc.to_request().label_prompts == {3: "a calm lake at dawn"}
    win.doc.add_box("rock", (0.1, 0.1, 0.4, 0.4))
    assert table.rowCount() == 3 and table.item(2, 0).text() == "box 1: rock" and table.item(1, 1).text() == "a calm lake at dawn"
    win.region_prompts.set_prompt(2, "a mossy boulder")
    assert win.doc.boxes[0].prompt == "a mossy boulder" and win.doc.to_request().boxes[0].prompt == "a mossy boulder"
    win.doc.undo()
    assert win.doc.boxes[0].prompt is None and table.item(2, 1).text() == ""
    win.region_prompts.set_prompt(1, "")
    assert win.doc.params.label_prompts == {}


def test_region_tool_moves_resizes_and_the_result_is_pasted_back(make_window, qtbot):
    seen = []
    win = make_window(runner=_capturing(seen))
    base = _noise(96, 128, 3)
    win.doc.set_image(base)
    win.doc.undo_stack.clear()
    win.tool_actions["region"].trigger()
    drag(win.canvas, [(16, 16), (40, 40), (80, 64)])
    assert win.doc.region == (16, 16, 64, 48)
    drag(win.canvas, [(40, 40), (44, 44), (48, 48)])
    assert win.doc.region == (24, 24, 64, 48)
    drag(win.canvas, [(88, 72), (96, 80), (104, 88)])
    assert win.doc.region == (24, 24, 80, 64) and len(win.doc.undo_stack.done) == 3
    assert "region 80×64" in win.canvas.region_text
    win.doc.set_param("seed_mode", "fixed")
    win.doc.set_param("seed", 5)
    win.params_panel.task.setCurrentIndex(win.params_panel.task.findData("img2img"))
    with qtbot.waitSignal(win.bridge.result, timeout=10000):
        win.generate()
    req = seen[-1]
    assert (req.width, req.height) == (80, 64) and np.array_equal(req.image, base[24:88, 24:104])
    assert win.canvas.preview_region == (24, 24, 80, 64) and win.doc.history[0].region == (24, 24, 80, 64)
    done = len(win.doc.undo_stack.done)
    win.history_strip.apply_button.click()
    assert len(win.doc.undo_stack.done) == done + 1
    assert np.array_equal(win.doc.image[24:88, 24:104], fake_image(80, 64, 5))
    outside = np.ones((96, 128), bool)
    outside[24:88, 24:104] = False
    assert np.array_equal(win.doc.image[outside], base[outside])
    win.doc.undo()
    assert np.array_equal(win.doc.image, base)
    for _ in range(3):
        win.doc.undo()
    assert win.doc.region is None and win.doc.to_request().width == 128


@pytest.fixture
def user_models(tmp_path, monkeypatch):
    user = tmp_path / "user_models"
    monkeypatch.setattr(api, "user_models_dir", lambda: str(user))

    def inspect(path):
        if Path(path).read_bytes().startswith(b"bad"):
            return api.ModelInfo(path=str(path), name=Path(path).stem, error="not a checkpoint")
        return api.ModelInfo(path=str(path), name=Path(path).stem, family="sd_v1", tasks=("txt2img", "img2img"))

    monkeypatch.setattr(api, "inspect_model", inspect)
    return user, inspect


def test_automatic_names_the_bundled_model_of_the_current_task(make_window, monkeypatch):
    """The model line follows the task the canvas implies: drawing a box turns Automatic to the layout model, undo
    turns it back, without re-running the model's canvas choices."""
    bundled = {t: api.ModelInfo(path=f"/m/world-{t}.safetensors", name=f"world-{t}", family=f"world-{t}", tasks=(t,))
               for t in ("txt2img", "layout")}
    monkeypatch.setattr(api, "default_model_for", lambda task: bundled.get(task))
    win = make_window()
    chosen = []
    win.model_panel.modelChanged.connect(chosen.append)
    win.doc.set_param("prompt", "a red circle")
    assert win.doc.task() == "txt2img" and "world-txt2img" in win.model_panel.info.text()
    win.doc.add_box("red circle", (0.1, 0.1, 0.4, 0.4))
    assert win.doc.task() == "layout" and "Automatic: world-layout" in win.model_panel.info.text()
    win.doc.undo()
    assert "Automatic: world-txt2img" in win.model_panel.info.text() and chosen == []
    combo = win.params_panel.task
    tips = [combo.itemData(i, Qt.ItemDataRole.ToolTipRole) for i in range(combo.count())]
    assert all(tips) and "planner" in tips[combo.findData("layout")]


def test_prompt_hint_names_the_words_the_text_model_ignores_and_shows_an_example(make_window, monkeypatch):
    """The bundled text model reads only its world's words: the placeholder gives an example, and a word outside them
    is named as ignored while that model is the one that will read the prompt."""
    vocab = ("a", "red", "blue", "circle", "square", "on", "grass", "above", "under", "the", "sky")
    bundled = {"txt2img": api.ModelInfo(path="/m/world-txt2img.safetensors", name="world-txt2img", family="world",
                                        tasks=("txt2img",), vocabulary=vocab),
               "layout": api.ModelInfo(path="/m/world-layout.safetensors", name="world-layout", family="world",
                                       tasks=("layout",))}
    monkeypatch.setattr(api, "default_model_for", lambda task: bundled.get(task))
    win = make_window()
    panel = win.prompt_panel
    panel.prompt.setPlainText("a red circle")
    assert panel.hint.isHidden()
    assert win.task_options.best_of.isEnabled() and win.doc.to_request().best_of == 4
    assert "e.g. a red circle above a blue square on grass under the sky" in panel.prompt.placeholderText()
    panel.prompt.setPlainText("a red Cat above a dog, on grass")
    assert not panel.hint.isHidden() and "cat, dog: ignored" in panel.hint.text()
    assert "world-txt2img" in panel.hint.text() and "grass" in panel.hint.toolTip()
    win.doc.add_box("red circle", (0.1, 0.1, 0.4, 0.4))
    assert win.doc.task() == "layout" and panel.hint.isHidden()
    assert panel.prompt.placeholderText() == panel.PLACEHOLDER
    win.doc.undo()
    assert not panel.hint.isHidden()
    monkeypatch.setattr(api, "planner_vocabulary", lambda path="": vocab + ("dog",))
    win.doc.set_task_override("layout")
    assert win.doc.task() == "layout" and not win.doc.boxes
    assert "the layout planner does not know cat: ignored" in panel.hint.text() and not panel.hint.isHidden()


def test_planner_vocabulary_is_read_from_the_bundled_planners_header(tmp_path):
    from engine.world import VOCAB

    assert api.planner_vocabulary() == tuple(VOCAB)
    (tmp_path / "bad.safetensors").write_bytes(b"not a planner")
    assert api.planner_vocabulary(str(tmp_path / "bad.safetensors")) == ()
    assert api.planner_vocabulary(str(tmp_path / "missing.safetensors")) == ()


def test_guidance_follows_the_model_until_the_user_sets_it(make_window, monkeypatch):
    """The bundled (project-trained) models were measured at guidance 3: Automatic sets it; another family gets the
    usual 5; a value the user typed stays."""
    world = api.ModelInfo(path="/m/world-semantic.safetensors", name="world-semantic", family="world-semantic",
                          tasks=("semantic",))
    monkeypatch.setattr(api, "default_model_for", lambda task: world)
    win = make_window()
    assert win.doc.params.cfg_scale == 3.0 and win.doc.to_request(win.settings).cfg_scale == 3.0
    combo = win.model_panel.combo
    combo.setCurrentIndex(1)
    assert combo.currentData().endswith("sem.safetensors") and win.doc.params.cfg_scale == 5.0
    combo.setCurrentIndex(0)
    assert win.doc.params.cfg_scale == 3.0
    win.doc.set_param("cfg_scale", 6.5)
    combo.setCurrentIndex(1)
    assert win.doc.params.cfg_scale == 6.5


def test_add_model_dialog_installs_selects_and_reports_errors(make_window, user_models, tmp_path, monkeypatch):
    user, inspect = user_models
    win = make_window()
    fixed = api.list_models()
    monkeypatch.setattr(api, "list_models", lambda extra=(): fixed + [inspect(str(f)) for f in sorted(user.glob("*"))])
    src = tmp_path / "mine.safetensors"
    src.write_bytes(b"ok")
    answer = {"path": str(src)}
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (answer["path"], ""))
    win.model_panel.add_button.click()
    dest = user / "mine.safetensors"
    assert dest.is_symlink() and dest.resolve() == src.resolve()
    assert win.model_panel.combo.currentData() == str(dest) and win.doc.params.model == str(dest)
    assert "sd_v1" in win.model_panel.info.text() and win.doc.to_request().model == str(dest)
    assert win.task_options.refine_model.findData(str(dest)) >= 0
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"bad")
    answer["path"] = str(bad)
    win.model_panel.add_button.click()
    assert "not a checkpoint" in win.model_panel.info.text() and not (user / "broken.safetensors").exists()
    assert win.doc.params.model == str(dest)
    answer["path"] = str(src)
    win.model_panel.add_button.click()
    assert "already in" in win.model_panel.info.text()
    answer["path"] = ""
    count = win.model_panel.combo.count()
    win.model_panel.add_button.click()
    assert win.model_panel.combo.count() == count and win.doc.params.model == str(dest)


def test_settings_dialog_persists_and_applies_to_the_next_request(make_window, qtbot, tmp_path, monkeypatch):
    seen = []
    win = make_window(runner=_capturing(seen))
    win.persist_settings = True
    folder = tmp_path / "more_models"
    listed = []
    monkeypatch.setattr(api, "list_models", lambda extra=(): listed.append(extra) or [])
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: str(folder))

    def fill(dlg):
        dlg.device.setCurrentText("cpu")
        dlg.precision.setCurrentText("bfloat16")
        dlg.tile_mode.setCurrentText("on")
        dlg.tile_size.setValue(96)
        dlg.tile_overlap.setValue(24)
        dlg.preview.setValue(0.5)
        dlg.memory.setValue(2048)
        dlg.autosave.setValue(30)
        [b for b in dlg.findChildren(QPushButton) if b.text() == "Browse..."][0].click()
        return QDialog.DialogCode.Accepted

    monkeypatch.setattr(SettingsDialog, "exec", fill)
    win.settings_dialog()
    saved = load_settings()
    assert (saved.device, saved.precision, saved.tile_mode, saved.tile_size, saved.tile_overlap) == ("cpu", "bfloat16", "on", 96, 24)
    assert (saved.preview_interval_s, saved.memory_budget_mb, saved.autosave_interval_s) == (0.5, 2048, 30)
    assert saved.models_dir == str(folder) and listed[-1] == (str(folder),)
    assert win.autosave_timer.interval() == 30000
    with qtbot.waitSignal(win.bridge.result, timeout=10000):
        win.generate()
    req = seen[-1]
    assert (req.device, req.dtype, req.tiles.mode, req.tiles.tile, req.tiles.overlap) == ("cpu", "bfloat16", "on", 96, 24)
    assert (req.preview_interval_s, req.memory_budget_mb) == (0.5, 2048)
    monkeypatch.setattr(SettingsDialog, "exec", lambda dlg: dlg.device.setCurrentText("cuda") or QDialog.DialogCode.Rejected)
    win.settings_dialog()
    assert win.settings.device == "cpu" and load_settings().device == "cpu"


def _array(img: QImage) -> np.ndarray:
    img = img.convertToFormat(QImage.Format.Format_RGBA8888)
    return np.frombuffer(img.constBits(), np.uint8).reshape(img.height(), img.bytesPerLine() // 4, 4)[:, :img.width()].copy()


def test_icon_png_is_the_svg_render_and_is_the_window_icon(make_window):
    svg, png = icon.icon_paths()
    assert svg.exists() and png.exists()
    rendered = _array(icon.render_svg(svg, 256)).astype(np.int16)
    stored = _array(QImage(str(png))).astype(np.int16)
    assert stored.shape == rendered.shape == (256, 256, 4)
    assert np.abs(stored - rendered).mean() < 2 and rendered[..., 3].mean() > 100 and rendered[:, :, :3].std() > 30
    assert rendered[0, 0, 3] == 0 and rendered[128, 128, 3] == 255
    win = make_window()
    shown = _array(win.windowIcon().pixmap(64, 64).toImage()).astype(np.int16)
    assert shown.shape[:2] == (64, 64)
    small = _array(icon.render_svg(svg, 64)).astype(np.int16)
    assert np.abs(shown - small).mean() < 4


def test_generate_panel_fits_its_dock_without_scrolling_sideways(make_window, monkeypatch, tmp_path):
    long = api.ModelInfo(path=str(tmp_path / ("v1-5-pruned-emaonly-" * 4 + ".safetensors")), name="x" * 90,
                         family="sd-v1", tasks=("txt2img", "img2img", "inpaint"))
    monkeypatch.setattr(api, "list_models", lambda extra=(): [long])
    win = make_window()
    win.model_panel.refresh()
    win.resize(1280, 820)
    for task in (None, "inpaint", "upscale", "layout", "txt2img"):
        win.doc.set_task_override(task)
        QApplication.processEvents()
        scroll = win.findChild(QDockWidget, "Generate").widget()
        assert scroll.horizontalScrollBar().maximum() == 0, task
    assert win.canvas.width() >= 560


def test_the_strength_box_edits_inpaintings_own_strength_when_the_task_is_inpaint(make_window):
    win = make_window()
    box = win.params_panel.strength
    win.doc.set_task_override("img2img")
    assert box.isEnabled() and box.value() == 0.75
    box.setValue(0.4)
    win.doc.stroke("mask", [(20, 20)], radius=6, value=255)
    win.doc.set_task_override(None)
    assert win.doc.task() == "inpaint" and box.value() == 1.0 and "fills the mask" in box.toolTip()
    box.setValue(0.6)
    req = win.doc.to_request(seed=1)
    assert (req.inpaint_strength, req.strength) == (0.6, 0.4)


def test_help_lists_every_shortcut_and_about_names_the_folders(make_window, tmp_path):
    win = make_window()
    dlg = win.show_shortcuts()
    rows = {dlg.table.item(i, 0).text(): dlg.table.item(i, 1).text() for i in range(dlg.table.rowCount())}
    assert rows["Generate"] == "Ctrl+Return, Ctrl+Enter" and rows["Live"] == "Ctrl+L" and rows["Mask brush"] == "B"
    assert rows["Paste into canvas"] == "Ctrl+Shift+V" and rows["Keyboard shortcuts"] == "F1" and "Brush size" in rows
    keys = [k.toString() for a in win.actions() for k in a.shortcuts()]
    assert len(keys) == len(set(keys)), "a shortcut bound twice fires neither"
    dlg.close()
    text = win.about_text()
    assert "Latent Canvas" in text and str(tmp_path / "out") in text and api.default_models_dir() in text


def test_extras_menu_adds_loras_and_embeddings_and_installs_a_lora_given_as_a_model(make_window, tmp_path, monkeypatch):
    from safetensors.numpy import save_file

    user = tmp_path / "user_models"
    monkeypatch.setattr(api, "user_models_dir", lambda: str(user))
    (user / "loras").mkdir(parents=True)
    weights = {"lora_unet_out_2.lora_down.weight": np.zeros((4, 8), np.float32),
               "lora_unet_out_2.lora_up.weight": np.zeros((8, 4), np.float32)}
    save_file(weights, str(user / "loras" / "ink.safetensors"))
    win = make_window()
    panel = win.prompt_panel
    panel.prompt.setPlainText("a cat")
    panel.fill_extras_menu()
    ink = [a for a in panel.extras_menu.actions() if a.text() == "ink"]
    assert len(ink) == 1
    ink[0].trigger()
    assert win.doc.params.prompt == "a cat <lora:ink:1>"
    ink[0].trigger()
    assert win.doc.params.prompt == "a cat <lora:ink:1>"
    panel.prompt.undo()
    assert win.doc.params.prompt == "a cat"
    src = tmp_path / "oil.safetensors"
    save_file(weights, str(src))
    assert api.LORA_NOTE in api.inspect_model(str(src)).error
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (str(src), ""))
    win.model_panel.add_button.click()
    assert (user / "loras" / "oil.safetensors").exists() and not (user / "oil.safetensors").exists()
    assert win.doc.params.prompt == "a cat <lora:oil:1>"
    panel.fill_extras_menu()
    assert {"ink", "oil"} <= {a.text() for a in panel.extras_menu.actions()}
    negative = next(a.menu() for a in panel.extras_menu.actions() if a.text() == "Embedding in the negative prompt")
    assert not negative.isEnabled()
    (user / "embeddings").mkdir()
    save_file({"emb_params": np.zeros((2, 8), np.float32)}, str(user / "embeddings" / "EasyNegative.safetensors"))
    panel.negative.setPlainText("blurry")
    panel.fill_extras_menu()
    negative = next(a.menu() for a in panel.extras_menu.actions() if a.text() == "Embedding in the negative prompt")
    [easy] = negative.actions()
    easy.trigger()
    assert win.doc.params.negative_prompt == "blurry, embedding:EasyNegative"
    assert win.doc.params.prompt == "a cat <lora:oil:1>"


def test_vae_chooser_lists_the_models_vae_folder_and_round_trips(make_window, tmp_path):
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "ft-mse.safetensors").write_bytes(b"x")
    win = make_window()
    vae = win.model_panel.vae
    assert [vae.itemText(i) for i in range(vae.count())] == ["The model's own", "ft-mse"] and vae.isEnabled()
    vae.setCurrentIndex(1)
    req = win.doc.to_request(win.settings)
    assert req.vae == "ft-mse"
    parsed = parse_parameters(format_parameters(req))
    assert parsed["vae"] == "ft-mse"
    assert parse_parameters("a cat\nSteps: 20, Seed: 1")["vae"] == ""
    win.doc.set_param("vae", "from-a-png")
    win.model_panel.sync(win.doc)
    assert vae.currentText() == "from-a-png"


def test_styles_wrap_the_prompts_when_generating_and_are_kept_in_the_settings(make_window, monkeypatch):
    from PySide6.QtWidgets import QInputDialog

    from app.prompt_edit import with_style

    assert with_style("oil painting, {prompt}, golden frame", "a cat") == "oil painting, a cat, golden frame"
    assert with_style("oil painting", "a cat,") == "a cat, oil painting" and with_style("", "a cat") == "a cat"
    win = make_window()
    panel = win.prompt_panel
    panel.prompt.setPlainText("{prompt}, watercolour")
    panel.negative.setPlainText("blurry")
    monkeypatch.setattr(QInputDialog, "getText", lambda *a, **k: ("Watercolour", True))
    assert panel.save_style_dialog() == "Watercolour"
    assert win.settings.styles == [{"name": "Watercolour", "prompt": "{prompt}, watercolour",
                                    "negative_prompt": "blurry"}]
    assert [panel.style.itemText(i) for i in range(panel.style.count())] == ["No style", "Watercolour"]
    panel.prompt.setPlainText("a red circle")
    panel.negative.setPlainText("")
    panel.style.setCurrentIndex(1)
    req = win.doc.to_request(win.settings)
    assert (req.prompt, req.negative_prompt) == ("a red circle, watercolour", "blurry")
    assert "a red circle, watercolour" in format_parameters(req)
    win.delete_style("Watercolour")
    assert win.settings.styles == [] and win.doc.params.style == "" and panel.style.count() == 1
    assert win.doc.to_request(win.settings).prompt == "a red circle"


def test_styles_survive_the_settings_file_and_bad_entries_are_dropped(tmp_path):
    import json

    from app.settings import AppSettings, save_settings

    path = tmp_path / "s.json"
    save_settings(AppSettings(styles=[{"name": "Ink", "prompt": "ink", "negative_prompt": ""}]), path)
    assert load_settings(path).style("Ink")["prompt"] == "ink"
    path.write_text(json.dumps({"styles": [{"name": "Ok", "prompt": 3}, {"prompt": "no name"}, "junk", {"name": ""}]}))
    assert load_settings(path).styles == [{"name": "Ok", "prompt": "3", "negative_prompt": ""}]
