"""Document model without Qt: strokes, undo/redo, task inference, requests, project files, recovery."""
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from app import project, raster, undo
from app.document import Document
from app.parameters import format_parameters, parse_parameters, read_png_parameters, write_png
from app.settings import AppSettings, load_settings, save_settings

ROOT = Path(__file__).resolve().parents[1]


def test_document_modules_import_no_qt():
    code = "import sys, app.document, app.project, app.settings, app.parameters; print('PySide6' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_stroke_rasterizes_a_polyline_of_dabs():
    cov, rect = raster.stroke_coverage((64, 64), [(10, 32), (50, 32)], radius=4, hardness=1.0)
    assert cov[32, 10:51].min() == 1.0
    assert cov[32 - 8, 30] == 0 and cov[32, 60] == 0
    y0, y1, x0, x1 = rect
    assert y0 <= 27 and y1 >= 37 and x0 <= 6 and x1 >= 54
    soft, _ = raster.stroke_coverage((64, 64), [(32, 32)], radius=10, hardness=0.0)
    assert soft[32, 32] > 0.9 and 0.2 < soft[32, 37] < 0.8 and soft[32, 44] == 0


def test_mask_stroke_is_one_undo_step_and_redo_restores():
    doc = Document(64, 48)
    seen = []
    doc.subscribe(seen.append)
    assert doc.stroke("mask", [(5, 5), (40, 20), (60, 40)], radius=3, hardness=0.8, value=255)
    painted = doc.mask.copy()
    assert painted[5, 5] == 255 and painted[40, 60] == 255 and painted[0, 63] == 0
    assert "mask" in seen and len(doc.undo_stack.done) == 1 and doc.dirty
    assert doc.undo() and not doc.mask.any()
    assert doc.redo() and np.array_equal(doc.mask, painted)
    doc.stroke("mask", [(5, 5), (60, 40)], radius=3, value=0)
    assert doc.mask[5, 5] == 0
    doc.undo()
    assert np.array_equal(doc.mask, painted)


def test_a_blank_canvas_is_sized_without_an_undo_step_and_a_used_one_is_not():
    doc = Document(512, 512)
    seen = []
    doc.subscribe(seen.append)
    assert doc.is_blank() and doc.start_size(256, 192)
    assert (doc.width, doc.height) == (256, 192) and doc.image.shape == (192, 256, 3) and doc.labels.shape == (192, 256)
    assert not doc.can_undo and not doc.dirty and "size" in seen
    doc.stroke("mask", [(10, 10), (40, 10)], radius=3)
    doc.undo()
    assert doc.can_redo and not doc.is_blank() and not doc.start_size(64, 64) and doc.width == 256
    doc = Document(64, 64)
    doc.add_box("red circle", (0, 0, 10, 10))
    assert not doc.is_blank() and not doc.start_size(128, 128)


def test_invert_mask_is_one_undo_step():
    doc = Document(16, 8)
    doc.stroke("mask", [(4, 4)], radius=2, hardness=0.5, value=255)
    painted = doc.mask.copy()
    doc.invert_mask()
    assert np.array_equal(doc.mask, 255 - painted) and doc.task() == "inpaint"
    assert doc.undo() and np.array_equal(doc.mask, painted) and doc.redo() and doc.mask[0, 15] == 255


def test_label_stroke_fill_and_undo():
    doc = Document(32, 32)
    doc.stroke("labels", [(0, 16), (31, 16)], radius=2, value=7)
    assert (doc.labels[16] == 7).all() and doc.labels[0, 0] == -1
    assert doc.fill("labels", (3, 3), 2)
    assert (doc.labels[:14] == 2).all() and (doc.labels[19:] == -1).all()
    assert doc.fill("labels", (3, 25), 5) and (doc.labels[19:] == 5).all()
    doc.undo()
    assert (doc.labels[19:] == -1).all() and (doc.labels[:14] == 2).all()
    doc.undo()
    assert (doc.labels[:14] == -1).all()
    assert not doc.fill("labels", (3, 25), -1)


def test_box_add_edit_delete_each_undoable():
    doc = Document()
    i = doc.add_box("cat", (0.6, 0.5, 0.1, 0.2), prompt="a tabby")
    assert doc.boxes[i].rect == (0.1, 0.2, 0.6, 0.5) and doc.boxes[i].prompt == "a tabby"
    doc.set_box(i, rect=(0.2, 0.2, 0.9, 1.4), label="dog")
    assert doc.boxes[0].label == "dog" and doc.boxes[0].rect[3] == 1.0
    assert doc.box_at(0.5, 0.5) == 0 and doc.box_at(0.05, 0.05) is None
    doc.delete_box(0)
    assert doc.boxes == []
    doc.undo()
    assert doc.boxes[0].label == "dog"
    doc.undo()
    assert doc.boxes[0].label == "cat"
    doc.undo()
    assert doc.boxes == [] and not doc.can_undo
    doc.redo()
    assert doc.boxes[0].label == "cat"


def test_set_image_apply_result_and_resize_are_undoable():
    doc = Document(16, 16)
    img = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    doc.set_image(img)
    assert doc.has_image and (doc.width, doc.height) == (30, 20) and doc.mask.shape == (20, 30)
    doc.stroke("mask", [(5, 5)], radius=2)
    doc.apply_result(255 - img)
    assert not doc.mask.any() and np.array_equal(doc.image, 255 - img)
    doc.undo()
    assert doc.mask.any() and np.array_equal(doc.image, img)
    doc.undo(), doc.undo()
    assert not doc.has_image and doc.image.shape == (16, 16, 3)
    doc.resize(8, 24)
    assert doc.labels.shape == (24, 8)


def test_task_inference_and_override():
    doc = Document(32, 32)
    assert doc.task() == "txt2img"
    doc.set_image(np.zeros((32, 32, 3), np.uint8))
    doc.set_param("upscale", True)
    assert doc.task() == "upscale"
    doc.stroke("labels", [(4, 4)], radius=2, value=3)
    assert doc.task() == "semantic"
    doc.add_box("person", (0.1, 0.1, 0.5, 0.5))
    assert doc.task() == "layout"
    doc.stroke("mask", [(10, 10)], radius=3)
    assert doc.task() == "inpaint"
    doc.set_task_override("img2img")
    assert doc.task() == "img2img" and doc.inferred_task() == "inpaint"
    with pytest.raises(ValueError):
        doc.set_task_override("paint")


def test_to_request_carries_what_the_task_needs():
    doc = Document(40, 24)
    doc.set_param("prompt", "a red fox")
    doc.set_param("seed_mode", "fixed")
    doc.set_param("seed", 1234)
    doc.stroke("mask", [(10, 10)], radius=3)
    s = AppSettings(device="cpu", precision="bfloat16", tile_size=96, memory_budget_mb=900)
    req = doc.to_request(s)
    assert req.task == "inpaint" and req.seed == 1234 and req.prompt == "a red fox"
    assert req.mask.shape == (24, 40) and req.image.shape == (24, 40, 3) and req.labels is None
    assert (req.device, req.dtype, req.tiles.tile, req.memory_budget_mb) == ("cpu", "bfloat16", 96, 900)
    doc.undo()
    doc.add_box("cat", (0, 0, 0.5, 0.5), "tabby")
    req = doc.to_request()
    assert req.task == "layout" and req.boxes[0].label == "cat" and req.image is None and req.boxes[0].prompt == "tabby"
    doc.set_param("seed_mode", "random")
    assert len({doc.to_request().seed for _ in range(5)}) > 1
    doc.add_history([np.zeros((4, 4, 3), np.uint8)], "p", seeds=[77])
    doc.set_param("seed_mode", "reuse")
    assert doc.to_request().seed == 77


def _rich_doc():
    doc = Document(48, 32)
    doc.set_image(np.random.default_rng(1).integers(0, 255, (32, 48, 3), dtype=np.uint8))
    doc.stroke("mask", [(3, 3), (30, 20)], radius=4, hardness=0.5)
    doc.stroke("labels", [(40, 5)], radius=3, value=181)
    doc.add_box("tree", (0.1, 0.2, 0.3, 0.4), "an oak")
    doc.set_param("prompt", "forest")
    doc.set_task_override("semantic")
    doc.add_history([np.full((8, 8, 3), 9, np.uint8), np.full((8, 8, 3), 10, np.uint8)], "forest\nSteps: 3", [5, 6])
    return doc


def test_save_open_round_trip(tmp_path):
    doc = _rich_doc()
    path = tmp_path / "a.lcproj"
    project.save(doc, path)
    assert not doc.dirty and doc.path == str(path)
    back = project.load(path)
    for name in ("image", "mask", "labels"):
        assert np.array_equal(getattr(back, name), getattr(doc, name)), name
    assert back.labels.dtype == np.int16 and back.labels.min() == -1 and back.labels.max() == 181
    assert back.boxes == doc.boxes and back.params == doc.params and back.task_override == "semantic"
    assert len(back.history) == 1 and back.history[0].seeds == [5, 6] and back.history[0].images[1][0, 0, 0] == 10
    assert back.has_image and not back.dirty
    with zipfile.ZipFile(path) as z:
        assert {"manifest.json", "image.png", "mask.png", "labels.png"} <= set(z.namelist())


def test_open_rejects_garbage(tmp_path):
    bad = tmp_path / "bad.lcproj"
    bad.write_bytes(b"not a zip")
    with pytest.raises(project.ProjectError):
        project.load(bad)


def test_atomic_write_keeps_old_file_when_writing_fails(tmp_path, monkeypatch):
    doc = _rich_doc()
    path = tmp_path / "a.lcproj"
    project.save(doc, path)
    before = path.read_bytes()
    doc.stroke("mask", [(40, 30)], radius=5)

    def boom(arr):
        raise OSError("disk full")

    monkeypatch.setattr(project, "_png", boom)
    with pytest.raises(OSError):
        project.save(doc, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.lcproj"]
    assert doc.dirty


def test_recovery_after_simulated_crash(tmp_path):
    folder = tmp_path / "rec"
    first = project.Recovery(folder)
    assert first.start() is False
    doc = _rich_doc()
    doc.path = "/somewhere/x.lcproj"
    first.autosave(doc)
    # no finish(): the process "crashed"
    second = project.Recovery(folder)
    assert second.start() is True
    back = second.recover()
    assert np.array_equal(back.mask, doc.mask) and back.boxes == doc.boxes and back.dirty
    assert back.path == "/somewhere/x.lcproj"
    second.finish()
    third = project.Recovery(folder)
    assert third.start() is False


def test_parameters_chunk_round_trip(tmp_path):
    doc = Document(64, 32)
    doc.set_param("prompt", "a castle, at night")
    doc.set_param("negative_prompt", "blurry")
    doc.set_param("steps", 12)
    doc.set_param("cfg_scale", 7.5)
    req = doc.to_request(seed=99)
    text = format_parameters(req)
    parsed = parse_parameters(text)
    assert parsed["prompt"] == "a castle, at night" and parsed["negative_prompt"] == "blurry"
    assert (parsed["steps"], parsed["cfg_scale"], parsed["seed"], parsed["width"], parsed["height"]) == (12, 7.5, 99, 64, 32)
    png = tmp_path / "out.png"
    write_png(png, np.zeros((4, 4, 3), np.uint8), text)
    assert read_png_parameters(png) == text
    assert parse_parameters("just a prompt") == {"prompt": "just a prompt", "negative_prompt": ""}
    doc.set_param("hires_strength", 0.4)
    assert (parse_parameters(format_parameters(doc.to_request(seed=1)))["hires_strength"]) == 0.4
    doc.set_param("colour_fix", False)
    up = doc.to_request(seed=1)
    up.task = "upscale"
    assert up.colour_fix is False and parse_parameters(format_parameters(up))["colour_fix"] is False
    assert "Clip skip" not in text and parsed["clip_skip"] == 1
    a1111 = "a cat\nSteps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1, Clip skip: 2"
    assert parse_parameters(a1111)["sampler"] == "dpmpp_2m_karras" and parse_parameters(a1111)["clip_skip"] == 2
    assert parse_parameters("a cat\nSteps: 20, Sampler: Euler a, Seed: 1")["sampler"] == "euler_a"
    assert "sampler" not in parse_parameters("a cat\nSteps: 20, Sampler: LCM, Seed: 1")
    assert parse_parameters("a cat\nSteps: 20, Tiling: True")["seamless"] == "xy" and parsed["seamless"] == "off"
    doc.set_param("seamless", "x")
    assert parse_parameters(format_parameters(doc.to_request(seed=1)))["seamless"] == "x"
    doc.set_param("clip_skip", 2)
    text = format_parameters(doc.to_request(seed=1))
    assert "Clip skip: 2" in text and parse_parameters(text)["clip_skip"] == 2


def test_settings_persist_and_survive_bad_values(tmp_path):
    path = tmp_path / "s.json"
    save_settings(AppSettings(device="cpu", tile_size=128, models_dir="/m"), path)
    s = load_settings(path)
    assert (s.device, s.tile_size, s.models_dir) == ("cpu", 128, "/m")
    path.write_text('{"device": "quantum", "tile_size": "x", "bogus": 1}')
    s = load_settings(path)
    assert s.device == "auto" and s.tile_size == 64
    path.write_text("{")
    assert load_settings(path) == AppSettings()


def test_whole_label_map_loads_as_one_undo_step():
    doc = Document(64, 48)
    labels = np.arange(32 * 24, dtype=np.int64).reshape(24, 32) % 9
    doc.set_labels(labels)
    assert doc.labels.shape == (48, 64) and doc.labels[47, 63] == labels[23, 31] and doc.labels[0, 2] == labels[0, 1]
    assert doc.task() == "semantic" and len(doc.undo_stack.done) == 1
    doc.undo()
    assert (doc.labels == -1).all()
    with pytest.raises(ValueError):
        doc.set_labels(np.zeros((4, 4, 3)))


def test_extend_grows_the_canvas_masks_the_new_area_and_keeps_every_old_pixel_in_one_undo_step():
    """Outpainting's canvas: old pixels, mask and labels in place, the new band masked with unpainted labels and a
    blurred continuation of the edge colours, boxes still over the same pixels, the region reset; one undo step."""
    from app.document import LayoutBox

    doc = Document(40, 24)
    img = np.zeros((24, 40, 3), np.uint8)
    img[:, :20] = (200, 30, 30)
    img[:, 20:] = (30, 30, 200)
    doc.set_image(img)
    doc.stroke("mask", [(5, 5)], radius=2)
    doc.fill("labels", (30, 12), 3)
    doc.add_box("cat", (0.5, 0.25, 1.0, 0.75))
    doc.set_region((8, 8, 16, 16))
    before = (doc.image.copy(), doc.mask.copy(), doc.labels.copy(), list(doc.boxes), doc.region)
    steps = len(doc.undo_stack.done)
    assert doc.extend(left=8, right=16, bottom=8) and len(doc.undo_stack.done) == steps + 1
    assert (doc.width, doc.height) == (64, 32) and doc.region is None
    assert np.array_equal(doc.image[:24, 8:48], img) and np.array_equal(doc.mask[:24, 8:48], before[1])
    assert np.array_equal(doc.labels[:24, 8:48], before[2])
    new = np.ones((32, 64), bool)
    new[:24, 8:48] = False
    assert (doc.mask[new] == 255).all() and (doc.labels[new] == -1).all()
    assert tuple(doc.image[12, 60]) == pytest.approx((30, 30, 200), abs=2)
    assert tuple(doc.image[12, 0]) == pytest.approx((200, 30, 30), abs=2)
    assert doc.boxes[0].rect == pytest.approx((28 / 64, 6 / 32, 48 / 64, 18 / 32))
    assert doc.boxes[0].label == "cat" and doc.task() == "inpaint"
    assert not doc.extend() and (doc.width, doc.height) == (64, 32)
    with pytest.raises(ValueError, match="grow"):
        doc.extend(left=-8)
    doc.undo()
    assert np.array_equal(doc.image, before[0]) and np.array_equal(doc.labels, before[2])
    assert doc.boxes == before[3] and isinstance(doc.boxes[0], LayoutBox) and doc.region == before[4]


def test_crop_cuts_every_layer_to_the_rect_and_clips_boxes_in_one_undo_step():
    doc = Document(64, 48)
    img = (np.arange(64 * 48 * 3) % 251).astype(np.uint8).reshape(48, 64, 3)
    doc.set_image(img)
    doc.stroke("mask", [(20, 20)], radius=3)
    doc.fill("labels", (1, 1), 2)
    doc.add_box("cat", (0.25, 0.25, 0.75, 0.75))
    doc.add_box("dog", (0.9, 0.9, 1.0, 1.0))
    mask, steps = doc.mask.copy(), len(doc.undo_stack.done)
    assert doc.crop((16, 8, 32, 24)) and len(doc.undo_stack.done) == steps + 1
    assert (doc.width, doc.height) == (32, 24) and doc.region is None
    assert np.array_equal(doc.image, img[8:32, 16:48]) and np.array_equal(doc.mask, mask[8:32, 16:48])
    assert (doc.labels == 2).all()
    assert [b.label for b in doc.boxes] == ["cat"] and doc.boxes[0].rect == pytest.approx((0, 4 / 24, 1, 1))
    assert not doc.crop((0, 0, 32, 24))
    with pytest.raises(ValueError, match="8×8"):
        doc.crop((30, 0, 10, 10))
    doc.undo()
    assert np.array_equal(doc.image, img) and [b.label for b in doc.boxes] == ["cat", "dog"]


def test_paste_into_lays_a_picture_onto_the_image_clipped_to_the_canvas():
    doc = Document(32, 16)
    pic = np.full((10, 12, 3), 77, np.uint8)
    assert doc.paste_into(pic, 26, -4) and doc.has_image
    assert (doc.image[:6, 26:] == 77).all() and (doc.image[6:, :] == 255).all() and (doc.image[:, :26] == 255).all()
    assert not doc.paste_into(pic, 40, 0)
    doc.undo()
    assert (doc.image == 255).all() and not doc.has_image


def test_undo_keeps_only_changed_layers_and_a_byte_budget():
    doc = Document(256, 256)
    doc.stroke("labels", [(10, 10), (200, 200)], radius=6, hardness=1.0, value=3)
    labels = doc.labels.copy()
    rng = np.random.default_rng(0)
    for _ in range(3):
        doc.apply_result(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8))
    apply = doc.undo_stack.done[-1]
    assert undo.nbytes(apply) <= 2 * (256 * 256 * 4) + 256 * 256 * 2  # image and mask, before and after; no labels
    image = doc.image.copy()
    assert doc.undo() and not np.array_equal(doc.image, image) and np.array_equal(doc.labels, labels)
    assert doc.redo() and np.array_equal(doc.image, image)

    doc.undo_stack.max_bytes = 3 * undo.nbytes(apply)
    for _ in range(6):
        doc.apply_result(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8))
    held = sum(map(undo.nbytes, doc.undo_stack.done))
    assert held <= doc.undo_stack.max_bytes and len(doc.undo_stack.done) == 3
    last = doc.image.copy()
    assert doc.undo() and doc.undo() and doc.undo() and not doc.undo()
    assert doc.redo() and doc.redo() and doc.redo() and np.array_equal(doc.image, last)
    doc.undo_stack.max_bytes = 1
    doc.apply_result(last[::-1].copy())
    assert len(doc.undo_stack.done) == 1 and doc.undo() and np.array_equal(doc.image, last)


def test_history_is_bounded_by_memory_and_each_result_is_encoded_once(tmp_path, monkeypatch):
    doc = Document(64, 64)
    rng = np.random.default_rng(1)
    results = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(5)]
    doc.history_max_bytes = 3 * results[0].nbytes
    for i, img in enumerate(results):
        doc.add_history([img], f"p{i}", seeds=[i])
    assert [h.parameters for h in doc.history] == ["p2", "p3", "p4"]

    encoded = []
    real = project._png
    monkeypatch.setattr(project, "_png", lambda a: encoded.append(a.shape) or real(a))
    project.save(doc, tmp_path / "a.lcproj")
    first = len(encoded)
    project.save(doc, tmp_path / "b.lcproj")
    assert len(encoded) - first == first - 3  # the second save encodes the layers again, not the results
    back = project.load(tmp_path / "b.lcproj")
    assert all(np.array_equal(h.images[0], results[i + 2]) for i, h in enumerate(back.history))
    back.history_max_bytes = doc.history_max_bytes
    back.add_history([results[0]], "p5")
    assert [h.parameters for h in back.history][-1] == "p5" and len(back.history) < 4


def test_a_floating_paste_moves_freely_and_lands_in_one_undo_step():
    doc = Document(64, 48)
    seen = []
    doc.subscribe(seen.append)
    picture = np.full((10, 20, 3), 7, np.uint8)
    doc.float_picture(picture, 5, 5)
    doc.move_floating(50, 40)  # partly outside: clipped when laid
    assert "floating" in seen and not doc.can_undo and (doc.image == 255).all()
    assert (doc.flattened()[40:, 50:] == 7).all() and (doc.flattened()[:40] == 255).all()
    assert doc.anchor() and doc.floating is None and len(doc.undo_stack.done) == 1
    assert (doc.image[40:, 50:] == 7).all() and (doc.image[:40] == 255).all() and not doc.anchor()
    doc.float_picture(picture, 100, 100)
    assert not doc.anchor() and len(doc.undo_stack.done) == 1  # nothing overlapped: nothing laid
    doc.float_picture(picture, 0, 0)
    assert doc.drop_floating() and not doc.drop_floating() and (doc.image[:10, :20] == 255).all()
    stripes = np.zeros((10, 20, 3), np.uint8)
    stripes[:, ::2] = 250
    doc.float_picture(stripes, 2, 3)
    doc.move_floating(4, 6, 40, 20)
    assert doc.floating.size == (40, 20) and doc.floating.rgb is stripes
    assert np.array_equal(doc.flattened()[6:26, 4:44], raster.resize_smooth(stripes, 40, 20))


def test_inpainting_has_its_own_strength_that_round_trips_through_the_infotext():
    doc = Document(32, 32)
    doc.stroke("mask", [(10, 10)], radius=4, value=255)
    assert doc.task() == "inpaint" and doc.to_request(seed=1).inpaint_strength == 1.0
    doc.set_param("strength", 0.3)  # img2img's: not inpainting's
    doc.set_param("inpaint_strength", 0.55)
    text = format_parameters(doc.to_request(seed=1))
    assert "Denoising strength: 0.55" in text
    parsed = parse_parameters(text)
    assert parsed["inpaint_strength"] == 0.55 and "strength" not in parsed


def test_a_colour_sketch_paints_the_image_in_one_undo_step_and_asks_for_img2img(tmp_path):
    doc = Document(64, 48)
    assert doc.task() == "txt2img"
    assert doc.stroke("image", [(10, 10), (40, 10)], radius=4, value=(200, 30, 30))
    assert tuple(doc.image[10, 25]) == (200, 30, 30) and tuple(doc.image[40, 25]) != (200, 30, 30)
    assert doc.task() == "img2img" and doc.to_request(seed=1).image[10, 25].tolist() == [200, 30, 30]
    path = str(tmp_path / "sketch.lcproj")
    project.save(doc, path)
    assert project.load(path).task() == "img2img"
    doc.undo()
    assert tuple(doc.image[10, 25]) != (200, 30, 30)
    doc.redo()
    doc.apply_result(np.full((48, 64, 3), 90, np.uint8))
    assert doc.task() == "txt2img", "a new image is not a sketch"
    doc.undo()
    assert doc.task() == "img2img" and tuple(doc.image[10, 25]) == (200, 30, 30)
