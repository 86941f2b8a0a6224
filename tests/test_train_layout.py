"""Training the layout LDM: the box encoder's start, empty-layout dropout, hybrid box maps and multi-scale windows."""
import numpy as np
import torch

from engine import train_data as data
from engine.checkpoint import load
from engine.train import RunSpec
from engine.train_ldm import Batches, build_model, train_ldm
from test_train import TINY, ae_path  # noqa: F401  (the module's tiny first stage fixture)


def test_layout_encoder_starts_with_coordinate_structure(ae_path):
    from engine.train_ldm import init_conditioner

    model = build_model("layout", ae_path, size=16, **TINY)
    init_conditioner(model, "layout")
    w = model.cond_stage_model.transformer.token_emb.weight.detach()
    tok = data.layout_tokenizer(model.config.cond.vocab_size)
    cos = lambda a, b: float(torch.nn.functional.cosine_similarity(w[a], w[b], dim=0))
    cell = tok.coord_token(0.4, 0.6)
    assert cos(cell, tok.coord_token(0.43, 0.6)) > cos(cell, tok.coord_token(0.9, 0.1)) + 0.3
    names = tok.class_names
    pairs = [(a, b) for a in range(len(names)) for b in range(a)]
    shares = lambda a, b: bool(set(names[a].split()) & set(names[b].split()))
    related = np.mean([cos(a, b) for a, b in pairs if shares(a, b)])
    unrelated = np.mean([cos(a, b) for a, b in pairs if not shares(a, b)])
    assert related > unrelated + 0.25
    assert 0.5 < float(w.std()) < 2.0


def test_layout_trains_with_empty_layout_dropout_and_samples_with_it_as_uncond(ae_path):
    from engine.api import Box, Request
    from engine.tasks import base_conditioning
    from engine.train_ldm import TEXT_DROPOUT

    model = build_model("layout", ae_path, size=16, **TINY)
    assert model.config.cond.empty_layout_uncond
    rng = np.random.default_rng(0)
    pool = data.world_pool(data.train_seeds(rng, 8), 16)
    batches = Batches(model, "layout", pool, rng, world=True)
    seen = []
    model.cond_stage_model.encode = lambda t: (seen.append(t.clone()), torch.zeros(len(t), 1, 32))[1]
    batches(400)
    empty = (seen[0] == batches.empty).all(1).float().mean().item()
    assert abs(empty - TEXT_DROPOUT) < 0.05
    assert not (batches.tokens == batches.empty).all(1).any()
    del model.cond_stage_model.encode

    req = Request(task="layout", boxes=[Box("red circle", (0.1, 0.1, 0.5, 0.5))], width=16, height=16)
    with torch.no_grad():
        cond, uncond = base_conditioning(req, model, 16, 16)
        expect = model.get_learned_conditioning(batches.empty[None])
    assert torch.equal(uncond["context"], expect) and not torch.equal(cond["context"], expect)
    from dataclasses import replace

    model.config = replace(model.config, cond=replace(model.config.cond, empty_layout_uncond=False))
    assert base_conditioning(req, model, 16, 16)[1] is None  # released layout2img: never trained without boxes


def test_hybrid_layout_model_gets_its_boxes_as_a_map_and_the_empty_map_as_uncond(ae_path, tmp_path):
    from engine.api import Box, Request
    from engine.tasks import base_conditioning, layout_tokenizer

    model = build_model("layout", ae_path, size=16, raster=True, **TINY)
    cfg = model.config
    tok = layout_tokenizer(model)
    assert cfg.conditioning_key == "hybrid" and cfg.cond.layout_raster
    assert cfg.unet.in_channels == cfg.unet.out_channels + tok.n_classes
    rng = np.random.default_rng(0)
    pool = data.world_pool(data.train_seeds(rng, 8), 16)
    batches = Batches(model, "layout", pool, rng, world=True)
    seen = []
    model.cond_stage_model.encode = lambda t: (seen.append(t.clone()), torch.zeros(len(t), 1, 32))[1]
    z0, kw = batches(200)
    del model.cond_stage_model.encode
    dropped = (seen[0] == batches.empty).all(1)
    assert kw["concat"].shape == (200, tok.n_classes, *z0.shape[-2:])
    assert (kw["concat"][dropped] == 0).all() and (kw["concat"][~dropped].flatten(1).amax(1) > 0).all()
    tokens = seen[0][~dropped]
    for t, r in zip(tokens[:20], kw["concat"][~dropped][:20]):
        drawn = {int(c) for c in t[:-2:3] if c != tok.pad}
        assert {int(c) for c in torch.nonzero(r.flatten(1).amax(1) > 0).flatten()} == drawn

    req = Request(task="layout", boxes=[Box("red circle", (0.0, 0.0, 0.5, 1.0))], width=16, height=16)
    with torch.no_grad():
        cond, uncond = base_conditioning(req, model, 16, 16)
    red_circle = tok.class_id("red circle")
    assert cond["concat"].shape == (1, tok.n_classes, 4, 4) and (uncond["concat"] == 0).all()
    assert (cond["concat"][0, red_circle, :, :2] == 1).all() and cond["concat"][0, :, :, 2:].abs().sum() == 0

    out = tmp_path / "hybrid.safetensors"
    train_ldm("layout", RunSpec(tmp_path / "run", steps=2, batch=2, pool_size=8, progress=False), ae_path, out,
              size=16, raster=True, **TINY)
    loaded = load(out)
    assert loaded.config.conditioning_key == "hybrid" and loaded.config.cond.layout_raster

    import threading

    from engine.api import JobContext, TileSettings
    from engine.pipelines import run_request
    from engine.tasks import layout_tile_conditioning

    crop = layout_tile_conditioning(req, model, 4, 4)
    tile = crop({"cond": cond, "uncond": uncond}, (slice(0, 4), slice(1, 3)))
    assert torch.equal(tile["cond"]["concat"], cond["concat"][..., :, 1:3]) and (tile["uncond"]["concat"] == 0).all()
    events = []
    for tiles in ("off", "on"):
        job = Request(model=str(out), task="layout", boxes=req.boxes, width=32, height=32, steps=2, seed=1,
                      tiles=TileSettings(mode=tiles, tile=4, overlap=1))
        res = run_request(job, JobContext(1, events.append, threading.Event(), 1e9), {})
        assert res.images[0].shape == (32, 32, 3)


def test_train_ldm_cli_raster_flag_makes_a_hybrid_layout_file(ae_path, tmp_path):
    from engine.__main__ import main

    def train(name, *extra):
        out = tmp_path / f"{name}.safetensors"
        assert main(["train-ldm", "--kind", "layout", "--ae", str(ae_path), "--steps", "1", "--batch", "2", "--pool",
                     "8", "--size", "16", "--out", str(out), "--run-dir", str(tmp_path / name), "--no-progress",
                     *extra]) == 0
        return load(out).config

    assert train("hybrid", "--raster").conditioning_key == "hybrid"
    assert train("plain").conditioning_key == "crossattn"


def test_multiscale_layout_windows_carry_their_crop_and_the_window_of_the_box_map(ae_path):
    from engine.train_ldm import ScaledScenes, window_layout

    model = build_model("layout", ae_path, size=16, raster=True, **TINY)
    rng = np.random.default_rng(0)
    batches = Batches(model, "layout", data.world_pool(data.train_seeds(rng, 4), 16), rng, world=True)
    tok = batches.tok
    boxes = [("red circle", (0.1, 0.2, 0.6, 0.7)), ("blue star", (0.55, 0.5, 0.95, 0.9))]
    tokens, empty, raster = window_layout(batches, boxes, 16, 4, 8, 8)
    window = (0.5, 0.25, 1.0, 0.75)
    assert torch.equal(tokens, tok.with_crop(tok.encode(boxes), window))
    assert torch.equal(empty, tok.with_crop(tok.encode([]), window))
    inside = [(label, tuple(np.clip(((x0 - 0.5) * 2, (y0 - 0.25) * 2, (x1 - 0.5) * 2, (y1 - 0.25) * 2), 0, 1)))
              for label, (x0, y0, x1, y1) in boxes]
    assert torch.allclose(raster, tok.raster(inside, 8, 8)) and raster.sum() > 0

    scenes = ScaledScenes(batches, (32, 64), pool_size=4, window=8)
    seen = []
    model.cond_stage_model.encode = lambda t: (seen.append(t.clone()), torch.zeros(len(t), 1, 32))[1]
    z0, kw = scenes(100)
    del model.cond_stage_model.encode
    assert z0.shape == (100, 3, 8, 8) and kw["concat"].shape == (100, tok.n_classes, 8, 8)
    empty_rows = (seen[0][:, :-2] == tok.pad).all(1)
    assert 0 < empty_rows.sum() < 30 and (kw["concat"][empty_rows] == 0).all()
    assert (seen[0][:, -2] != tok.coord_token(0, 0)).any()


def test_coords_layout_model_takes_the_box_map_with_box_relative_coordinates(ae_path, tmp_path):
    from engine.__main__ import main
    from engine.api import Box, Request
    from engine.tasks import base_conditioning, layout_tokenizer
    from engine.train_ldm import window_layout

    model = build_model("layout", ae_path, size=16, coords=True, **TINY)
    cfg, tok = model.config, layout_tokenizer(model)
    assert cfg.conditioning_key == "hybrid" and cfg.cond.layout_raster and cfg.cond.layout_coords
    assert cfg.unet.in_channels == cfg.unet.out_channels + tok.n_classes + 2
    rng = np.random.default_rng(0)
    batches = Batches(model, "layout", data.world_pool(data.train_seeds(rng, 8), 16), rng, world=True)
    z0, kw = batches(64)
    maps = kw["concat"]
    assert maps.shape == (64, tok.n_classes + 2, *z0.shape[-2:])
    covered = maps[:, :-2].amax(1) > 0
    assert maps[:, -2:].abs().amax() <= 1 and (maps[:, -2:].abs().sum(1)[~covered] == 0).all()
    assert (maps[:, -2:].abs().sum(1)[covered] > 0).float().mean() > 0.5

    req = Request(task="layout", boxes=[Box("red circle", (0.0, 0.0, 0.5, 1.0))], width=16, height=16)
    with torch.no_grad():
        cond, uncond = base_conditioning(req, model, 16, 16)
    assert torch.allclose(cond["concat"][0, -2, 0, :2], torch.tensor([-0.5, 0.5])) and (uncond["concat"] == 0).all()
    boxes = [("red circle", (0.1, 0.2, 0.6, 0.7))]
    assert torch.equal(window_layout(batches, boxes, 16, 4, 8, 8)[2],
                       tok.raster(boxes, 16, 16, coords=True)[:, 4:12, 8:16])

    out = tmp_path / "coords.safetensors"
    assert main(["train-ldm", "--kind", "layout", "--ae", str(ae_path), "--steps", "1", "--batch", "2", "--pool", "8",
                 "--size", "16", "--out", str(out), "--run-dir", str(tmp_path / "run"), "--no-progress",
                 "--coords"]) == 0
    assert load(out).config.cond.layout_coords
