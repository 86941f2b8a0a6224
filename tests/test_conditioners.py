"""Conditioner tests: original checkpoint key lists at full size (meta device), parity with diffusers/transformers."""
import pytest
import torch

from engine.config import CondConfig
from engine.models.cond_stage_model import make_cond_stage

SD1 = CondConfig(kind="clip", embed_dim=768, n_layer=12, n_heads=12, vocab_size=49408, tokenizer="clip")
SD2 = CondConfig(kind="openclip", embed_dim=1024, n_layer=24, n_heads=16, vocab_size=49408, tokenizer="clip",
                 layer="penultimate")
BERT_1P4B = CondConfig(kind="bert", embed_dim=1280, n_layer=32, vocab_size=30522, max_seq_len=77, tokenizer="bert")
LAYOUT = CondConfig(kind="bert", embed_dim=512, n_layer=16, vocab_size=8192, max_seq_len=92, use_tokenizer=False,
                    tokenizer="layout")


def _shapes(module) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _meta(cfg):
    with torch.device("meta"):
        return make_cond_stage(cfg)


def _ln(prefix, d):
    return {f"{prefix}.weight": (d,), f"{prefix}.bias": (d,)}


def _lin(prefix, o, i, bias=True):
    return {f"{prefix}.weight": (o, i), **({f"{prefix}.bias": (o,)} if bias else {})}


def test_sd1_clip_keys_as_sd1_checkpoints():
    p, d = "transformer.text_model.", 768
    want = {p + "embeddings.token_embedding.weight": (49408, d), p + "embeddings.position_embedding.weight": (77, d),
            **_ln(p + "final_layer_norm", d)}
    for i in range(12):
        q = f"{p}encoder.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            want.update(_lin(q + "self_attn." + name, d, d))
        want.update({**_ln(q + "layer_norm1", d), **_ln(q + "layer_norm2", d),
                     **_lin(q + "mlp.fc1", 3072, d), **_lin(q + "mlp.fc2", d, 3072)})
    assert _shapes(_meta(SD1)) == want


def test_sd2_openclip_keys_as_open_clip():
    d = 1024
    want = {"model.token_embedding.weight": (49408, d), "model.positional_embedding": (77, d),
            "model.text_projection": (d, d), "model.logit_scale": (), **_ln("model.ln_final", d)}
    for i in range(24):
        q = f"model.transformer.resblocks.{i}."
        want.update({**_ln(q + "ln_1", d), **_ln(q + "ln_2", d), q + "attn.in_proj_weight": (3 * d, d),
                     q + "attn.in_proj_bias": (3 * d,), **_lin(q + "attn.out_proj", d, d),
                     **_lin(q + "mlp.c_fc", 4 * d, d), **_lin(q + "mlp.c_proj", d, 4 * d)})
    assert _shapes(_meta(SD2)) == want


@pytest.mark.parametrize("cfg", [BERT_1P4B, LAYOUT], ids=["txt2img-1p4B", "layout2img"])
def test_bert_keys_as_vendored_x_transformers(cfg):
    d, v, n = cfg.embed_dim, cfg.vocab_size, cfg.max_seq_len
    want = {"transformer.token_emb.weight": (v, d), "transformer.pos_emb.emb.weight": (n, d),
            **_ln("transformer.norm", d), **_lin("transformer.to_logits", v, d)}
    for j in range(2 * cfg.n_layer):
        q = f"transformer.attn_layers.layers.{j}."
        want.update(_ln(q + "0", d))
        if j % 2 == 0:
            for name in ("to_q", "to_k", "to_v"):
                want.update(_lin(q + "1." + name, 512, d, bias=False))
            want.update(_lin(q + "1.to_out", d, 512))
        else:
            want.update({**_lin(q + "1.net.0.0", 4 * d, d), **_lin(q + "1.net.2", d, 4 * d)})
    assert _shapes(_meta(cfg)) == want


def test_class_and_spatial_keys():
    assert _shapes(_meta(CondConfig(kind="class", embed_dim=512, n_classes=1001))) == {"embedding.weight": (1001, 512)}
    spatial = CondConfig(kind="spatial", n_stages=2, in_channels=182, out_channels=3)
    assert _shapes(_meta(spatial)) == {"channel_mapper.weight": (3, 182, 1, 1)}
    assert make_cond_stage(CondConfig(kind="none")) is None


def _randomize(module, scale=0.2):
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in module.named_parameters():
            norm_weight = p.dim() == 1 and name.endswith("weight")
            p.copy_(torch.randn(p.shape, generator=g) * scale + (1.0 if norm_weight else 0.0))


def test_sd2_penultimate_matches_diffusers_conversion():
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CondConfig(kind="openclip", embed_dim=32, n_layer=24, n_heads=4, vocab_size=49408, layer="penultimate")
    ours = make_cond_stage(cfg).eval()
    _randomize(ours)
    ckpt = {"cond_stage_model." + k: v for k, v in ours.state_dict().items()}
    ref = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=128, num_hidden_layers=23,
                                       num_attention_heads=4, max_position_embeddings=77, hidden_act="gelu")).eval()
    converted = convert_open_clip_checkpoint(ref, ckpt)
    if not hasattr(ref, "text_model"):
        converted = {k.removeprefix("text_model."): v for k, v in converted.items()}
    ref.load_state_dict(converted, strict=True)
    with torch.no_grad():
        ids = ours.tokenize(["a photo of a cat", "an astronaut riding a horse on the moon"])
        assert ids[0, 7] == 0
        got, want = ours.encode(ids), ref(input_ids=ids).last_hidden_state
        assert got.shape == (2, 77, 32)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.encode(["a photo of a cat"]), got[:1])
        assert not torch.allclose(ours.encode(ids, clip_skip=2), got, atol=1e-3)


def test_sd1_clip_matches_diffusers_conversion_and_loads_position_ids():
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint
    from transformers import CLIPTextModel

    cfg = CondConfig(kind="clip", embed_dim=32, n_layer=2, n_heads=4, vocab_size=49408)
    ours = make_cond_stage(cfg).eval()
    _randomize(ours)
    ckpt = {"cond_stage_model." + k: v for k, v in ours.state_dict().items()}
    converted = convert_ldm_clip_checkpoint(ckpt)
    assert set(converted) == {k.removeprefix("transformer.") for k in ours.state_dict()}
    ref = CLIPTextModel(ours.transformer.config).eval()
    if not hasattr(ref, "text_model"):
        converted = {k.removeprefix("text_model."): v for k, v in converted.items()}
    ref.load_state_dict(converted, strict=True)
    old_style = dict(ours.state_dict())
    old_style["transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    ours.load_state_dict(old_style, strict=True)
    with torch.no_grad():
        got = ours.encode(["a photo of a cat"])
        ids = torch.tensor([[49406, 320, 1125, 539, 320, 2368] + [49407] * 71])
        torch.testing.assert_close(got, ref(input_ids=ids).last_hidden_state)
        assert got.shape == (1, 77, 32)


def test_bert_embedder_text_ids_and_world():
    cfg = CondConfig(kind="bert", embed_dim=32, n_layer=2, n_heads=2, vocab_size=30522, max_seq_len=16,
                     tokenizer="bert")
    m = make_cond_stage(cfg).eval()
    with torch.no_grad():
        z = m.encode(["a red car", "a blue bird"])
        assert z.shape == (2, 16, 32)
        ids = m.tokenize(["a red car"])
        torch.testing.assert_close(m.encode(ids), z[:1])
        changed = ids.clone()
        changed[0, -1] = 5
        assert not torch.allclose(m.encode(changed)[0, 0], z[0, 0])
        torch.testing.assert_close(z.mean(-1), torch.zeros(2, 16), atol=1e-5, rtol=0)
    world = CondConfig(kind="bert", embed_dim=16, n_layer=1, n_heads=2, vocab_size=7, max_seq_len=8,
                       tokenizer="world", vocab=("red", "circle", "blue"))
    assert make_cond_stage(world).encode(["red circle"]).shape == (1, 8, 16)


def test_layout_bert_takes_token_ids_only():
    from engine.tokenizers import LayoutTokenizer

    cfg = CondConfig(kind="bert", embed_dim=32, n_layer=1, n_heads=2, vocab_size=8192, max_seq_len=92,
                     use_tokenizer=False, tokenizer="layout")
    m = make_cond_stage(cfg).eval()
    tokens = LayoutTokenizer()([[("Car", (0.1, 0.1, 0.5, 0.5))], [("Tree", (0, 0, 1, 1))]])
    with torch.no_grad():
        assert m.encode(tokens).shape == (2, 92, 32)
    with pytest.raises(TypeError):
        m.encode(["a car"])


def test_class_embedder():
    m = make_cond_stage(CondConfig(kind="class", embed_dim=8, n_classes=11))
    out = m.encode(torch.tensor([3, 10]))
    assert out.shape == (2, 1, 8)
    torch.testing.assert_close(out[:, 0], m.embedding.weight[[3, 10]])
    with pytest.raises(ValueError):
        m.encode(torch.tensor([11]))


def test_spatial_rescaler_label_map_and_one_hot():
    cfg = CondConfig(kind="spatial", n_stages=2, multiplier=0.5, in_channels=182, out_channels=3)
    m = make_cond_stage(cfg)
    labels = torch.full((2, 32, 48), 5, dtype=torch.long)
    labels[1, :, 24:] = 100
    with torch.no_grad():
        out = m.encode(labels)
        assert out.shape == (2, 3, 8, 12)
        torch.testing.assert_close(out[0], m.channel_mapper.weight[:, 5, 0, 0][:, None, None].expand(3, 8, 12))
        one_hot = torch.nn.functional.one_hot(labels, 182).permute(0, 3, 1, 2).float()
        torch.testing.assert_close(m.encode(one_hot), out)
        torch.testing.assert_close(out[1, :, :, -1], m.channel_mapper.weight[:, 100, 0, 0][:, None].expand(3, 8))


def test_identity_and_first_stage():
    x = torch.randn(1, 3, 8, 8)
    assert make_cond_stage(CondConfig(kind="identity")).encode(x) is x

    class Posterior:
        def __init__(self, mean):
            self.mean = mean

        def mode(self):
            return self.mean

    class FirstStage(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 2, stride=2)

        def encode(self, img):
            return Posterior(self.conv(img))

    fs = FirstStage()
    m = make_cond_stage(CondConfig(kind="first_stage"), first_stage=fs)
    assert len(m.state_dict()) == 0
    with torch.no_grad():
        torch.testing.assert_close(m.encode(x), fs.conv(x))
    with pytest.raises(ValueError):
        make_cond_stage(CondConfig(kind="first_stage"))


@pytest.mark.parametrize("family", ["sd1", "ldm-txt2img-1p4b"])
def test_text_conditioning_is_cached_per_prompt_and_weight_version(family, monkeypatch):
    from engine import tasks
    from engine.families import tiny
    from engine.models.latent_diffusion import LatentDiffusion
    from engine.random_weights import randomize_

    model = randomize_(LatentDiffusion(tiny(family)), seed=1).eval()
    calls = []
    encode = model.get_learned_conditioning
    tokenize = model.cond_stage_model.tokenize
    model.get_learned_conditioning = lambda ids, **kw: calls.append(ids.tolist()) or encode(ids, **kw)
    with torch.inference_mode():
        first = tasks.text_cond(model, ["a red circle"] * 3)
        assert calls == [tokenize(["a red circle"]).tolist()]  # one encoder pass for a batch of the same prompt
        torch.testing.assert_close(first, encode(["a red circle"] * 3))
        torch.testing.assert_close(tasks.text_cond(model, ["a red circle"]), first[:1], rtol=0, atol=0)
        tasks.text_cond(model, [""])
        assert calls[1:] == [tokenize([""]).tolist()]
    with torch.no_grad():
        next(model.cond_stage_model.parameters()).add_(0.5)  # changed weights: no stale context
    with torch.inference_mode():
        changed = tasks.text_cond(model, ["a red circle"])
    assert len(calls) == 3 and not torch.equal(changed, first[:1])
    monkeypatch.setattr(tasks, "TEXT_CACHE", 2)
    with torch.inference_mode():
        for p in ("a", "b", "c", "a"):
            tasks.text_cond(model, [p])
    assert calls[3:] == [tokenize([p]).tolist() for p in "abca"]  # "a" fell out of a two-entry cache
