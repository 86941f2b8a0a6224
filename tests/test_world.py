"""Shapes world: deterministic scenes, held-out seeds, and metrics whose ceiling (ground truth) is near 1 and whose
chance level (noise images, shuffled conditioning) is low. Run with -s to see the measured figures."""
import numpy as np
import pytest

from engine.world import metrics as M
from engine.world import scene as S
from engine.world.detect import detect, segment


def test_same_seed_same_scene_and_different_seeds_differ():
    a, b, c = S.render(123), S.render(123), S.render(124)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels)
    assert (a.caption, a.boxes) == (b.caption, b.boxes)
    assert not np.array_equal(a.image, c.image)
    images = S.batch(range(40)).images
    assert len({im.tobytes() for im in images}) == 40


def test_same_seed_is_the_same_scene_at_every_size():
    small, big = S.render(7, 64), S.render(7, 256)
    assert (small.caption, small.boxes) == (big.caption, big.boxes)
    down = big.image.reshape(64, 4, 64, 4, 3).mean((1, 3))
    assert M.psnr(small.image, down) > 25


def test_eval_seeds_are_held_out():
    assert S.EVAL_SEEDS.start >= S.TRAIN_SEEDS.stop or S.TRAIN_SEEDS.start >= S.EVAL_SEEDS.stop
    assert len(S.EVAL_SEEDS) >= 10_000 and len(S.TRAIN_SEEDS) >= 1_000_000
    assert not set(S.TRAIN_SEEDS[-5:]) & set(S.EVAL_SEEDS[:5])


def test_batch_shapes_and_class_lists():
    b = S.batch([1, 2, 3], 32)
    assert b.images.shape == (3, 32, 32, 3) and b.images.dtype == np.uint8
    assert b.labels.shape == (3, 32, 32) and b.labels.dtype == np.uint8
    assert len(b.captions) == len(b.boxes) == 3 and list(b.seeds) == [1, 2, 3]
    assert len(S.OBJECT_CLASSES) == 24 and S.OBJECT_CLASSES[0] == "red circle"
    assert S.SEMANTIC_CLASSES == S.REGIONS + S.SHAPES and list(S.VOCAB) == sorted(set(S.VOCAB))


def test_scene_statistics_follow_the_spec():
    scenes = [S.render(s) for s in range(300)]
    counts = np.bincount([len(s.objects) for s in scenes], minlength=4)
    assert counts[0] == 0 and min(counts[1:]) > 30
    objs = [o for s in scenes for o in s.objects]
    assert {o["colour"] for o in objs} == set(S.COLOURS) and {o["shape"] for o in objs} == set(S.SHAPES)
    assert all(0.2 - 1e-9 <= o["size"] <= 0.45 + 1e-9 for o in objs)
    for s in scenes:
        boxes = [b for _, b in s.boxes]
        assert all(M.box_iou(p, q) == 0 for i, p in enumerate(boxes) for q in boxes[i + 1:])
        assert s.labels.max() < len(S.SEMANTIC_CLASSES)
        assert all(w in S.VOCAB for w in s.caption.split())
        assert [f"{c} {k}" for c, k in S.parse_caption(s.caption).objects] == [o["label"] for o in s.objects]
    multi_region = np.mean([len(np.unique(s.labels[s.labels < len(S.REGIONS)])) > 1 for s in scenes])
    assert multi_region > 0.6
    assert {r for s in scenes for r in np.unique(s.labels)} == set(range(len(S.SEMANTIC_CLASSES)))


def test_object_count_is_what_render_draws_and_train_seeds_can_weight_it():
    from engine import train_data as data

    assert [S.object_count(s) for s in range(60)] == [len(S.render(s).objects) for s in range(60)]
    rng = np.random.default_rng(0)
    even = np.bincount([S.object_count(int(s)) for s in data.train_seeds(rng, 3000)], minlength=4)[1:] / 3000
    tilted = data.train_seeds(rng, 3000, (1, 2, 4))
    share = np.bincount([S.object_count(int(s)) for s in tilted], minlength=4)[1:] / 3000
    assert np.allclose(even, 1 / 3, atol=0.04) and np.allclose(share, np.array([1, 2, 4]) / 7, atol=0.04)
    assert len(set(tilted.tolist())) > 2990 and all(s in S.TRAIN_SEEDS for s in tilted[:100])
    only_two = data.train_seeds(rng, 50, (0, 1, 0))
    assert {S.object_count(int(s)) for s in only_two} == {2}
    with pytest.raises(ValueError, match="weights"):
        data.train_seeds(rng, 5, (1, 2))


def test_label_map_marks_object_pixels_with_their_shape():
    s = S.render_from_layout([("red square", (0.25, 0.25, 0.75, 0.75))], "water", 64, seed=3)
    cls = S.SEMANTIC_CLASSES
    assert (s.labels == cls.index("square")).sum() == 32 * 32
    assert set(np.unique(s.labels)) == {cls.index("water"), cls.index("square")}
    assert s.caption == "a red square on water"


def _figures(size: int, n: int) -> dict:
    scenes = [S.render(seed, size) for seed in S.EVAL_SEEDS[:n]]
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in scenes]
    other = scenes[1:] + scenes[:1]
    flat = lambda lists: float(np.mean([v for xs in lists for v in xs]))
    f = {
        "caption ceiling": np.mean([M.caption_match(s.image, s.caption) for s in scenes]),
        "caption strict ceiling": np.mean([M.caption_match(s.image, s.caption, strict=True) for s in scenes]),
        "caption chance noise": np.mean([M.caption_match(z, s.caption) for z, s in zip(noise, scenes)]),
        "caption chance shuffled": np.mean([M.caption_match(s.image, o.caption) for s, o in zip(scenes, other)]),
        "layout ceiling": flat(M.layout_score(s.image, s.boxes) for s in scenes),
        "layout chance noise": flat(M.layout_score(z, s.boxes) for z, s in zip(noise, scenes)),
        "layout chance shuffled": flat(M.layout_score(s.image, o.boxes) for s, o in zip(scenes, other)),
        "pixel ceiling": np.mean([M.pixel_accuracy(s.image, s.labels) for s in scenes]),
        "pixel chance noise": np.mean([M.pixel_accuracy(z, s.labels) for z, s in zip(noise, scenes)]),
        "pixel chance shuffled": np.mean([M.pixel_accuracy(s.image, o.labels) for s, o in zip(scenes, other)]),
    }
    print(f"\nshapes world metrics at {size}x{size} on {n} held-out scenes:")
    for k, v in f.items():
        print(f"  {k:26s} {v:.3f}")
    return f


def _check(f: dict) -> None:
    assert f["caption ceiling"] >= 0.95 and f["layout ceiling"] >= 0.95 and f["pixel ceiling"] >= 0.95
    assert f["caption strict ceiling"] >= 0.9
    assert f["caption chance noise"] <= 0.1 and f["caption chance shuffled"] <= 0.1
    assert f["layout chance noise"] <= 0.1 and f["layout chance shuffled"] <= 0.1
    assert f["pixel chance noise"] <= 0.5 and f["pixel chance shuffled"] <= 0.6


def test_metrics_ceiling_and_chance_64():
    _check(_figures(64, 200))


def test_metrics_ceiling_and_chance_256():
    _check(_figures(256, 24))


@pytest.mark.slow
def test_metrics_ceiling_and_chance_256_full():
    _check(_figures(256, 200))


def test_render_from_layout_is_the_layout_ceiling():
    rng = np.random.default_rng(1)
    for i, seed in enumerate(S.EVAL_SEEDS[:40]):
        boxes = []
        for label, (x0, y0, x1, y1) in S.render(seed).boxes:
            cx, w = (x0 + x1) / 2, (x1 - x0) * rng.uniform(0.8, 1.25)
            boxes.append((label, (cx - w / 2, y0, cx + w / 2, y1)))
        r = S.render_from_layout(boxes, S.REGIONS[i % 5], 64, seed=i)
        assert all(M.layout_score(r.image, boxes)) and M.caption_match(r.image, r.caption, strict=True)
    with pytest.raises(ValueError):
        S.render_from_layout([("teal circle", (0, 0, 0.5, 0.5))])


def test_render_from_labels_follows_the_map_at_any_size():
    for seed in S.EVAL_SEEDS[:20]:
        labels = S.render(seed).labels
        same, big = S.render_from_labels(labels, seed=seed), S.render_from_labels(labels, seed=seed, size=128)
        assert np.array_equal(same.labels, labels) and big.labels.shape == (128, 128)
        assert M.pixel_accuracy(same.image, labels) >= 0.93 and M.pixel_accuracy(big.image, labels) >= 0.93
        assert len(same.objects) == len(S.render(seed).objects)


def test_inpaint_score_removal_and_replacement():
    boxes = [("red circle", (0.1, 0.1, 0.4, 0.4)), ("blue star", (0.55, 0.55, 0.9, 0.9))]
    original = S.render_from_layout(boxes, "grass", 64, seed=5).image
    removed = S.render_from_layout(boxes[1:], "grass", 64, seed=5).image
    replaced = S.render_from_layout([("yellow square", (0.12, 0.12, 0.38, 0.38)), boxes[1]], "grass", 64, seed=5).image
    mask = np.zeros((64, 64), bool)
    mask[3:29, 3:29] = True
    paste = lambda inside: np.where(mask[..., None], inside, original)
    assert M.inpaint_score(original, paste(removed), mask, "remove the red circle").ok
    assert M.inpaint_score(original, paste(replaced), mask, "replace the red circle with a yellow square").ok
    assert M.inpaint_score(original, paste(replaced), mask, "a yellow square").ok
    assert not M.inpaint_score(original, original, mask, "remove the red circle").inside_ok
    assert not M.inpaint_score(original, paste(removed), mask, "replace the red circle with a yellow square").ok
    noisy = paste(removed).copy()
    noisy[40, 5] ^= 1
    score = M.inpaint_score(original, noisy, mask, "remove the red circle")
    assert score.inside_ok and not score.outside_unchanged and score.outside_max_diff == 1
    assert M.inpaint_score(original, paste(removed), mask, "remove the red circle").target_found
    assert not M.inpaint_score(original, paste(removed), mask, "remove the white star").target_found


def test_psnr_and_float_inputs():
    a = S.render(11).image
    assert M.psnr(a, a) == float("inf")
    b = np.clip(a.astype(np.int32) + 1, 0, 255).astype(np.uint8)
    expected = 10 * np.log10(255**2 / np.mean((a.astype(float) - b) ** 2))
    assert abs(M.psnr(a, b) - expected) < 1e-9 and 45 < M.psnr(a, b) < 50
    assert [d.label for d in detect(a / 255.0)] == [d.label for d in detect(a)]
    assert np.array_equal(segment(a.astype(np.float32)), segment(a))


def test_drop_leaves_one_object_out_of_the_same_scene():
    seed = next(s for s in S.EVAL_SEEDS if len(S.render(s).objects) == 3)
    full, without = S.render(seed), S.render(seed, drop=(1,))
    assert [o["label"] for o in without.objects] == [full.objects[i]["label"] for i in (0, 2)]
    box = full.boxes[1][1]
    outside = np.ones((64, 64), bool)
    outside[int(box[1] * 64) - 1:int(np.ceil(box[3] * 64)) + 1, int(box[0] * 64) - 1:int(np.ceil(box[2] * 64)) + 1] = False
    assert np.array_equal(full.image[outside], without.image[outside])
    assert sorted(d.label for d in detect(without.image)) == sorted(o["label"] for o in without.objects)


def test_rendering_is_fast_enough_for_online_training():
    import time

    S.batch(range(5))
    start = time.process_time()
    S.batch(range(200))
    assert 200 / (time.process_time() - start) > 50


def test_metrics_tolerate_mildly_degraded_renders():
    import cv2

    rng = np.random.default_rng(3)
    scenes = [S.render(seed) for seed in S.EVAL_SEEDS[200:300]]
    worse = [np.clip(cv2.GaussianBlur(s.image, (0, 0), 0.6) + rng.normal(0, 6, s.image.shape) + rng.integers(-12, 13, 3),
                     0, 255).astype(np.uint8) for s in scenes]
    assert np.mean([M.caption_match(w, s.caption) for w, s in zip(worse, scenes)]) >= 0.9
    assert np.mean([v for w, s in zip(worse, scenes) for v in M.layout_score(w, s.boxes)]) >= 0.9
    assert np.mean([M.pixel_accuracy(w, s.labels) for w, s in zip(worse, scenes)]) >= 0.9


def test_world_label_classes_get_the_worlds_own_colours():
    from engine.api import default_model_for
    from engine.palette import label_colors
    from engine.world.scene import REGION_RGB, SEMANTIC_CLASSES

    colors = label_colors(SEMANTIC_CLASSES)
    assert colors[:len(REGION_RGB)] == tuple(tuple(int(c) for c in rgb) for rgb in REGION_RGB)
    assert len(set(colors)) == len(SEMANTIC_CLASSES)
    info = default_model_for("semantic")
    assert info is not None and info.label_colors == colors
