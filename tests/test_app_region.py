"""Generation region and task options in the Qt-free document: snapping, undo, cropped requests, paste-back,
project and PNG round trips."""
import numpy as np
import pytest

from app import project, raster
from app.document import Document
from app.parameters import format_parameters, merge_parameters, parse_parameters


def _noise(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def test_region_snaps_to_the_latent_grid_clamps_and_is_undoable():
    doc = Document(200, 120)
    assert doc.generation_rect() == (0, 0, 200, 120) and doc.region is None
    assert doc.set_region((13, 7, 61, 45))
    assert doc.region == (16, 8, 64, 48) and doc.generation_rect() == (16, 8, 64, 48)
    doc.set_region((180, 100, 64, 64))
    x, y, w, h = doc.region
    assert (w, h) == (64, 64) and x + w <= 200 and y + h <= 120 and x % 8 == 0 and y % 8 == 0
    doc.set_region((0, 0, 200, 120))
    assert doc.region is None
    assert not doc.set_region(None)
    doc.undo()
    assert doc.region == (x, y, 64, 64)
    doc.undo()
    assert doc.region == (16, 8, 64, 48)
    doc.undo()
    assert doc.region is None and not doc.can_undo
    doc.redo()
    assert doc.region == (16, 8, 64, 48)


def test_request_is_cropped_to_the_region():
    doc = Document(128, 96)
    doc.set_image(_noise(96, 128))
    doc.stroke("mask", [(40, 40)], radius=6)
    doc.set_region((32, 16, 64, 48))
    req = doc.to_request(seed=1)
    assert req.task == "inpaint" and (req.width, req.height) == (64, 48)
    assert np.array_equal(req.image, doc.image[16:64, 32:96]) and np.array_equal(req.mask, doc.mask[16:64, 32:96])
    assert req.mask[24, 8] == 255
    doc.clear_layer("mask")
    doc.stroke("labels", [(100, 20)], radius=3, value=5)
    doc.stroke("labels", [(50, 30)], radius=3, value=2)
    req = doc.to_request(seed=1)
    assert req.labels.shape == (48, 64) and set(np.unique(req.labels)) == {-1, 2}
    doc.add_box("tree", (0.0, 0.0, 0.5, 0.5), "an oak")
    doc.add_box("rock", (0.9, 0.9, 1.0, 1.0))
    req = doc.to_request(seed=1)
    assert req.task == "layout" and len(req.boxes) == 1 and req.boxes[0].prompt == "an oak"
    assert req.boxes[0].box == pytest.approx((0.0, 0.0, (64 - 32) / 64, (48 - 16) / 48))
    doc.set_region(None)
    assert len(doc.to_request(seed=1).boxes) == 2


def test_result_is_pasted_back_at_its_region_as_one_undo_step():
    doc = Document(64, 48)
    base = _noise(48, 64, 1)
    doc.set_image(base)
    doc.stroke("mask", [(4, 4)], radius=3)
    doc.stroke("mask", [(30, 30)], radius=3)
    doc.set_region((24, 16, 32, 24))
    steps = len(doc.undo_stack.done)
    patch = np.full((24, 32, 3), 7, np.uint8)
    doc.apply_result(patch, region=doc.region)
    assert len(doc.undo_stack.done) == steps + 1
    assert (doc.image[16:40, 24:56] == 7).all()
    outside = np.ones((48, 64), bool)
    outside[16:40, 24:56] = False
    assert np.array_equal(doc.image[outside], base[outside])
    assert doc.mask[4, 4] > 0 and not doc.mask[16:40, 24:56].any() and (doc.width, doc.height) == (64, 48)
    doc.undo()
    assert np.array_equal(doc.image, base) and doc.mask[30, 30] > 0
    doc.apply_result(np.zeros((96, 128, 3), np.uint8), region=doc.region)
    assert (doc.width, doc.height) == (128, 96) and doc.region is None


def test_a_new_image_of_another_size_resets_the_region():
    doc = Document(64, 64)
    doc.set_region((16, 16, 32, 32))
    doc.set_image(_noise(64, 64))
    assert doc.region == (16, 16, 32, 32)
    doc.set_image(_noise(40, 200))
    assert doc.region is None and doc.generation_rect() == (0, 0, 200, 40)
    doc.undo()
    assert doc.region == (16, 16, 32, 32)


def test_canvas_resize_scales_the_region():
    doc = Document(64, 64)
    doc.set_region((16, 16, 32, 32))
    doc.resize(128, 128)
    assert doc.region == (32, 32, 64, 64)
    doc.undo()
    assert doc.region == (16, 16, 32, 32) and (doc.width, doc.height) == (64, 64)


def test_fit_region_and_crop_box_helpers():
    assert raster.fit_region((60, 52, -40, -30), 100, 100) == (16, 24, 40, 32)
    assert raster.fit_region((0, 0, 5000, 5000), 100, 80) is None
    assert raster.crop_box((0.0, 0.0, 0.1, 0.1), (50, 50, 50, 50), 100, 100) is None
    assert raster.crop_box((0.25, 0.5, 1.0, 1.0), (50, 50, 50, 50), 100, 100) == (0.0, 0.0, 1.0, 1.0)


def _options_doc():
    doc = Document(64, 48)
    doc.set_image(_noise(48, 64, 2))
    doc.set_param("upscale", True)
    doc.set_param("noise_level", 80)
    doc.set_param("upscaler", "esrgan")
    doc.set_param("refine_strength", 0.35)
    doc.set_param("refine_model", "/models/a, b.safetensors")
    doc.set_param("mask_grow", 6)
    doc.set_param("mask_feather", 3)
    doc.set_label_prompt(3, 'a "calm" lake, blue')
    doc.set_label_prompt(7, "pine trees")
    doc.set_label_prompt(7, "  ")
    return doc


def test_task_options_reach_the_request():
    doc = _options_doc()
    req = doc.to_request(seed=3)
    assert req.task == "upscale" and (req.noise_level, req.upscaler) == (80, "esrgan")
    assert (req.refine_strength, req.refine_model) == (0.35, "/models/a, b.safetensors")
    assert req.label_prompts == {3: 'a "calm" lake, blue'}
    doc.stroke("mask", [(10, 10)], radius=3)
    req = doc.to_request(seed=3)
    assert req.task == "inpaint" and (req.mask_grow, req.mask_feather) == (6, 3) and req.refine_strength == 0.0


def test_task_options_survive_project_and_png_round_trips(tmp_path):
    doc = _options_doc()
    doc.set_region((8, 8, 32, 32))
    doc.add_history([np.zeros((32, 32, 3), np.uint8)], "x\nSteps: 1", [4], region=doc.region)
    project.save(doc, tmp_path / "o.lcproj")
    back = project.load(tmp_path / "o.lcproj")
    assert back.params == doc.params and back.params.label_prompts == {3: 'a "calm" lake, blue'}
    assert back.region == (8, 8, 32, 32) and back.history[0].region == (8, 8, 32, 32)
    back.copy_parameters(0)
    assert back.params.label_prompts == {3: 'a "calm" lake, blue'} and back.params.seed == 4
    text = merge_parameters(format_parameters(doc.to_request(seed=9)),
                            "ignored\nSteps: 30, Seed: 1, Size: 128x128, Model: world-sr4, Family: ldm_sr4")
    parsed = parse_parameters(text)
    assert (parsed["noise_level"], parsed["upscaler"], parsed["refine_strength"]) == (80, "esrgan", 0.35)
    assert parsed["refine_model"] == "/models/a, b.safetensors" and parsed["label_prompts"] == {3: 'a "calm" lake, blue'}
    assert parsed["seed"] == 9 and parsed["model"] == "world-sr4" and "Family: ldm_sr4" in text
    doc.set_region(None)
    doc.set_image(_noise(48, 64))
    doc.stroke("mask", [(10, 10)], radius=3)
    parsed = parse_parameters(format_parameters(doc.to_request(seed=1)))
    assert (parsed["mask_grow"], parsed["mask_feather"]) == (6, 3) and "inpaint_crop" not in parsed
    doc.set_param("inpaint_crop", True)
    assert parse_parameters(format_parameters(doc.to_request(seed=1)))["inpaint_crop"] is True


def test_planned_boxes_land_where_they_were_generated_as_one_undo_step():
    doc = Document(128, 96)
    doc.set_task_override("layout")
    doc.set_region((32, 16, 64, 48))
    planned = [("red circle", (0.0, 0.0, 0.5, 0.5)), ("blue square", (0.5, 0.25, 1.0, 1.0))]
    doc.add_planned_boxes(planned, doc.generation_rect())
    assert [b.label for b in doc.boxes] == ["red circle", "blue square"]
    assert np.allclose(doc.boxes[0].rect, (32 / 128, 16 / 96, 64 / 128, 40 / 96))
    req = doc.to_request(seed=1)
    assert [(b.label, tuple(np.round(b.box, 6))) for b in req.boxes] == [(lbl, b) for lbl, b in planned]
    doc.set_param("best_of", 4)
    assert doc.to_request(seed=1).best_of == 1
    doc.undo()
    assert doc.boxes == [] and doc.to_request(seed=1).boxes == [] and doc.to_request(seed=1).best_of == 4
