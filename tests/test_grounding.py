"""Token grounding loss (TokenCompose): object words' positions and masks, the hooked attention maps, the loss, a
run."""
import json

import numpy as np
import pytest
import torch

from engine import train_data as data
from engine.checkpoint import load
from engine.grounding import CrossAttentionMaps, grounding_loss, object_words, token_targets
from engine.models.attention import BasicTransformerBlock
from engine.tokenizers import WorldTokenizer
from engine.train import RunSpec, ae_config, train_ae
from engine.train_ldm import Batches, build_model, diffusion_loss, train_ldm
from engine.world.scene import SHAPE_CLASS, VOCAB

TINY = dict(model_channels=32, context_dim=32, n_layer=1, tiny=True)


@pytest.fixture(scope="module")
def ae_path(tmp_path_factory):
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("ae")
    train_ae(RunSpec(run, steps=1, batch=2, pool_size=4, progress=False), ae_config(resolution=16, z=4), size=16,
             eval_n=2)
    return run / "ae.pt"


def test_object_words_are_the_colour_and_shape_tokens_in_caption_order():
    cap = "a red circle above a green star and a red square on grass under the sky"
    ids = WorldTokenizer(VOCAB)([cap])[0]
    pairs = object_words(cap)
    assert len(pairs) == 3
    words = [[WorldTokenizer(VOCAB).decode([int(ids[i])]) for i in p] for p in pairs]
    assert words == [["red", "circle"], ["green", "star"], ["red", "square"]]
    assert object_words("") == [] and object_words("on grass under the sky") == []


def test_token_targets_mask_each_object_in_its_box_and_skip_empty_captions():
    pool = data.world_pool(range(40), 32)
    caps = list(pool.captions)
    caps[0] = ""
    tok, masks, valid = token_targets(caps, pool.boxes, pool.labels)
    assert not valid[0].any()
    for i in range(1, 40):
        pairs = object_words(caps[i])
        assert int(valid[i].sum()) == 2 * len(pairs) == 2 * len(pool.boxes[i])
        for j, (label, (x0, y0, x1, y1)) in enumerate(pool.boxes[i]):
            m = masks[i, 2 * j].numpy()
            assert torch.equal(masks[i, 2 * j], masks[i, 2 * j + 1]) and m.sum() > 0
            ys, xs = np.nonzero(m)
            assert ys.min() >= int(y0 * 32) - 1 and ys.max() <= np.ceil(y1 * 32) and xs.min() >= int(x0 * 32) - 1
            assert (pool.labels[i][m > 0] == SHAPE_CLASS[label.split()[1]]).all()
    assert int(valid.sum()) == sum(2 * len(b) for b in pool.boxes[1:])


def test_attention_maps_are_each_blocks_cross_attention_and_hooks_go_away(ae_path):
    torch.manual_seed(0)
    model = build_model("txt2img", ae_path, size=16, **TINY)
    unet = model.model.diffusion_model
    blocks = [m for m in unet.modules() if isinstance(m, BasicTransformerBlock)]
    ctx = model.cond_stage_model.encode(["a red circle on grass", "a blue star"])
    seen = []
    blocks[0].attn2.register_forward_hook(lambda m, a, o: seen.append(a))
    with CrossAttentionMaps(unet) as maps:
        model.model(torch.randn(2, 4, 4, 4), torch.tensor([10, 900]), context=ctx)
    assert len(maps) == len(blocks) > 0
    x, c = seen[0]
    attn = blocks[0].attn2
    q = attn.to_q(x).unflatten(-1, (attn.heads, -1)).transpose(1, 2)
    k = attn.to_k(c).unflatten(-1, (attn.heads, -1)).transpose(1, 2)
    want = torch.softmax(q @ k.mT / q.shape[-1] ** 0.5, -1).mean(1)
    torch.testing.assert_close(maps[0], want)
    torch.testing.assert_close(maps[0].sum(-1), torch.ones(2, x.shape[1]))
    with torch.no_grad():
        model.model(torch.randn(2, 4, 4, 4), torch.tensor([10, 900]), context=ctx)
    assert len(maps) == len(blocks)


def test_grounding_loss_is_the_squared_share_outside_and_its_gradient_moves_attention_onto_the_object():
    masks = torch.zeros(1, 2, 8, 8)
    masks[0, :, :4, :4] = 1
    tok, valid = torch.tensor([[1, 2]]), torch.tensor([[True, False]])
    logits = torch.zeros(1, 16, 3, requires_grad=True)
    a = logits.softmax(-1)
    loss = grounding_loss([a], tok, masks, valid)
    torch.testing.assert_close(loss, torch.tensor((1 - 4 / 16) ** 2))
    assert float(grounding_loss([a], tok, masks, torch.zeros_like(valid))) == 0.0
    assert float(grounding_loss([a], torch.tensor([[1, 7]]), masks, torch.tensor([[False, True]]))) == 0.0
    on = torch.zeros(1, 16, 3)
    on[0, [0, 1, 4, 5], 1] = 1
    assert float(grounding_loss([on], tok, masks, valid)) == 0.0
    loss.backward()
    g = logits.grad[0, :, 1].view(4, 4)
    assert (g[:2, :2] < 0).all() and (g[2:, :] > 0).all()


def test_a_grounded_txt2img_run_lowers_the_grounding_loss_and_records_its_weight(ae_path, tmp_path):
    torch.manual_seed(0)
    model = build_model("txt2img", ae_path, size=16, **TINY)
    pool = data.world_pool(range(16), 16)
    batches = Batches(model, "txt2img", pool, np.random.default_rng(0), world=True, grounded=True)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=3e-3)
    gen = torch.Generator().manual_seed(0)

    def measure():
        with torch.no_grad(), CrossAttentionMaps(model.model) as maps:
            diffusion_loss(model, *batches(16), gen)
        return float(grounding_loss(maps, *batches.targets))

    before = np.mean([measure() for _ in range(4)])
    for _ in range(30):
        with CrossAttentionMaps(model.model) as maps:
            loss = diffusion_loss(model, *batches(8), gen)
        opt.zero_grad()
        (loss + grounding_loss(maps, *batches.targets)).backward()
        opt.step()
    assert np.mean([measure() for _ in range(4)]) < 0.8 * before

    out = tmp_path / "g.safetensors"
    info = train_ldm("txt2img", RunSpec(tmp_path / "run", steps=2, batch=2, pool_size=8, progress=False), ae_path, out,
                     size=16, grounding=0.05, **TINY)
    assert info["grounding"] == 0.05
    assert json.loads(load(out).metadata["latent_canvas.training"])["grounding"] == 0.05
    plain = train_ldm("txt2img", RunSpec(tmp_path / "run2", steps=1, batch=2, pool_size=8, progress=False), ae_path,
                      tmp_path / "p.safetensors", size=16, **TINY)
    assert "grounding" not in plain
    with pytest.raises(ValueError, match="shapes world"):
        train_ldm("layout", RunSpec(tmp_path / "run3", steps=1, batch=2, pool_size=8, progress=False), ae_path,
                  tmp_path / "l.safetensors", size=16, grounding=0.05, **TINY)
