"""Prompt syntax (emphasis, BREAK, LoRA tags) and long prompts, as A1111 reads them."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from engine.prompts import BREAK, PromptError, emphasis, lora_tags, parse, plain


@pytest.mark.parametrize("prompt, segments", [
    ("a red circle", [("a red circle", 1.0)]),
    ("a (red:1.5) circle", [("a ", 1.0), ("red", 1.5), (" circle", 1.0)]),
    ("((red)) [blue]", [("red", 1.21), (" ", 1.0), ("blue", 0.909091)]),
    ("(b [c] d:1.2) e", [("b ", 1.2), ("c", 1.090909), (" d", 1.2), (" e", 1.0)]),
    (r"a \(b\) c", [("a (b) c", 1.0)]),
    ("open (end", [("open ", 1.0), ("end", 1.1)]),
    ("time 12:30, ratio 3:2)", [("time 12:30, ratio 3:2)", 1.0)]),
    ("(red:1.0) circle", [("red circle", 1.0)]),
])
def test_emphasis_follows_a1111(prompt, segments):
    assert emphasis(prompt) == segments


def test_break_and_lora_tags_leave_the_text():
    p = parse("a cat BREAK a dog <lora:ink:0.7>, <lora:styles/oil> (fur:1.3)")
    assert p.loras == [("ink", 0.7), ("styles/oil", 1.0)]
    assert p.segments[1] == (BREAK, 1.0) and p.weighted
    assert p.plain == "a cat a dog, fur"
    assert plain("a (red:1.2) circle <lora:x:1>") == "a red circle"
    assert plain("a red circle") == "a red circle"
    with pytest.raises(PromptError, match="must be a number"):
        lora_tags("<lora:a:b:c>")


@pytest.fixture(scope="module")
def sd1():
    from engine.families import tiny
    from engine.models.latent_diffusion import LatentDiffusion
    from engine.random_weights import randomize_

    return randomize_(LatentDiffusion(tiny("sd1"))).eval()


def test_plain_prompt_encodes_as_before_and_weights_change_only_their_tokens(sd1):
    from engine.tasks import prompt_context

    with torch.no_grad():
        base = sd1.get_learned_conditioning(["a red circle"])
        torch.testing.assert_close(prompt_context(sd1, "a red circle"), base, rtol=0, atol=0)
        torch.testing.assert_close(prompt_context(sd1, "a (red:1.0) circle"), base, rtol=0, atol=0)
        up = prompt_context(sd1, "a (red:1.5) circle")
    ratio = (up / base)[0, :, 0]
    red = 2  # <bos> a red circle <eos>
    assert ratio[red] == pytest.approx(1.5 * ratio[0].item(), rel=1e-4)
    others = torch.cat([ratio[:red], ratio[red + 1:]])
    torch.testing.assert_close(others, torch.full_like(others, ratio[0].item()))
    assert up.mean().item() == pytest.approx(base.mean().item(), rel=1e-4)


def test_long_prompts_and_break_make_whole_chunks(sd1):
    from engine.tasks import prompt_context

    words = " ".join(["red circle"] * 50)  # 100 tokens: 75 in the first chunk, from the second "circle" on in the next
    with torch.no_grad():
        long = prompt_context(sd1, words)
        broken = prompt_context(sd1, "a red circle BREAK a blue square")
        assert long.shape == (1, 154, 32)
        rest = "circle " + " ".join(["red circle"] * 12)
        torch.testing.assert_close(long[:, 77:], sd1.get_learned_conditioning([rest]))
        torch.testing.assert_close(broken[:, 77:], sd1.get_learned_conditioning(["a blue square"]))


def test_contexts_of_different_lengths_guide_exactly_as_tiled(sd1):
    """Cross-attention over a context repeated r times equals attention over it once, so cond and uncond of
    different chunk counts batch together without changing either."""
    from engine.guidance import merge_cond, same_length

    unet = sd1.model.diffusion_model
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(1, 4, 8, 8, generator=g), torch.tensor([500])
    short, long = torch.randn(1, 77, 32, generator=g), torch.randn(1, 154, 32, generator=g)
    with torch.no_grad():
        once = unet(x, t, short)
        torch.testing.assert_close(unet(x, t, same_length(short, long)[0]), once, rtol=1e-4, atol=1e-5)
    merged = merge_cond({"context": long}, {"context": short}, 1)["context"]
    assert merged.shape == (2, 154, 32) and torch.equal(merged[0, 77:], short[0])
    assert same_length(torch.zeros(1, 154, 4), torch.zeros(1, 231, 4))[0].shape[1] == 462


def test_a_long_weighted_prompt_runs_through_the_job_api(tmp_path):
    from conftest_models import write_tiny

    from engine.api import Engine, Request, Result

    path = write_tiny(tmp_path, "sd1")
    engine = Engine()
    try:
        prompt = "(a red circle:1.3), " + ", ".join(["on grass under the sky"] * 20) + " BREAK [blue]"
        jobs = [engine.submit(Request(model=str(path), prompt=p, negative_prompt="blurry", width=32, height=32,
                                      steps=2, seed=3)) for p in (prompt, "a red circle")]
        a, b = (engine.wait(j, 120) for j in jobs)
        assert isinstance(a, Result) and isinstance(b, Result), (a, b)
        assert a.parameters.startswith(prompt)
        assert not (a.images[0] == b.images[0]).all()
    finally:
        engine.shutdown()


@pytest.mark.parametrize("family", ["sd1", "sd2", "ldm-txt2img-1p4b"])
def test_an_embedding_of_known_token_vectors_encodes_as_those_words(family, tmp_path):
    """Textual inversion: the file's vectors stand where its name is, through each kind of text encoder."""
    from safetensors.torch import save_file

    from engine import embeddings
    from engine.families import tiny
    from engine.models.latent_diffusion import LatentDiffusion
    from engine.random_weights import randomize_
    from engine.tasks import prompt_context

    model = randomize_(LatentDiffusion(tiny(family))).eval()
    cond = model.cond_stage_model
    cond.tokenize("")
    ids = cond.tokenizer.encode("red circle")
    table = embeddings.token_embedding(cond).weight.detach()
    save_file({"emb_params": table[ids].clone()}, tmp_path / "Fancy.safetensors")
    names = {"fancy": tmp_path / "Fancy.safetensors"}
    with torch.no_grad():
        want = prompt_context(model, "a (red circle:1.2) on grass")
        torch.testing.assert_close(prompt_context(model, "a (Fancy:1.2) on grass", names), want, rtol=0, atol=0)
        torch.testing.assert_close(prompt_context(model, "a (embedding:fancy:1.2) on grass", names), want)
        assert not torch.equal(prompt_context(model, "a (fancy:1.2) on grass"), want)
        assert not torch.equal(prompt_context(model, "a (fancy-ish:1.2) on grass", names)[:, :8], want[:, :8])


def test_embedding_files_of_every_layout_and_clear_refusals(tmp_path):
    from safetensors.torch import save_file

    from engine import embeddings

    vec = torch.randn(3, 32)
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vec}, "name": "a1111", "step": 100},
               tmp_path / "a1111.pt")
    torch.save({"<cat-toy>": vec[0]}, tmp_path / "learned_embeds.bin")
    save_file({"emb_params": vec}, tmp_path / "st.safetensors")
    torch.testing.assert_close(embeddings.read(tmp_path / "a1111.pt"), vec)
    torch.testing.assert_close(embeddings.read(tmp_path / "learned_embeds.bin"), vec[:1])
    torch.testing.assert_close(embeddings.read(tmp_path / "st.safetensors"), vec)
    save_file({"clip_l": vec, "clip_g": vec.clone()}, tmp_path / "xl.safetensors")
    with pytest.raises(embeddings.EmbeddingError, match="SDXL"):
        embeddings.read(tmp_path / "xl.safetensors")
    torch.save({"vec": vec, "how": embeddings.EmbeddingError("a pickled object")}, tmp_path / "evil.pt")
    with pytest.raises(embeddings.EmbeddingError, match="refused to load"):
        embeddings.read(tmp_path / "evil.pt")
    save_file({"a": vec, "b": vec.clone()}, tmp_path / "two.safetensors")
    with pytest.raises(embeddings.EmbeddingError, match="not a textual inversion"):
        embeddings.read(tmp_path / "two.safetensors")


def test_embeddings_found_beside_the_model_are_not_split_and_refuse_another_width(tmp_path):
    from safetensors.torch import save_file

    from conftest_models import write_tiny
    from engine.checkpoint import load
    from engine.embeddings import EmbeddingError
    from engine.tasks import text_cond

    model = load(write_tiny(tmp_path, "sd1"))
    with torch.no_grad():
        before = text_cond(model, ["a shiny circle"])
        (tmp_path / "embeddings").mkdir()
        save_file({"emb_params": torch.randn(4, 32)}, tmp_path / "embeddings" / "shiny.safetensors")
        after = text_cond(model, ["a shiny circle"])
        assert not torch.equal(before, after), "a new embedding file is not read from a stale cache"
        long = text_cond(model, [" ".join(["red"] * 73) + " shiny"])
        assert long.shape[1] == 154
        assert torch.equal(long[:, 77:83], text_cond(model, ["shiny"])[:, :6])
        save_file({"emb_params": torch.randn(1, 48)}, tmp_path / "embeddings" / "wide.safetensors")
        with pytest.raises(EmbeddingError, match="made for another model"):
            text_cond(model, ["a wide circle"])


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_clip_skip_reads_an_earlier_layer_and_is_reported(family, tmp_path):
    """A1111's Clip skip n: the n-th last layer through the final norm (SD2 counts from its own penultimate)."""
    from engine.families import tiny
    from engine.models.latent_diffusion import LatentDiffusion
    from engine.random_weights import randomize_
    from engine.tasks import prompt_context

    cfg = tiny(family)
    model = randomize_(LatentDiffusion(replace(cfg, cond=replace(cfg.cond, n_layer=4)))).eval()
    cond = model.cond_stage_model
    ids = cond.tokenize(["a red circle"])
    with torch.no_grad():
        one, two = prompt_context(model, "a red circle"), prompt_context(model, "a red circle", clip_skip=2)
        assert not torch.allclose(one, two, atol=1e-3)
        if family == "sd1":
            text = cond.transformer.text_model
            hidden = text(input_ids=ids, output_hidden_states=True).hidden_states
            torch.testing.assert_close(two, text.final_layer_norm(hidden[-2]))
        else:
            m = cond.model
            x = m.token_embedding(ids) + m.positional_embedding
            for block in m.transformer.resblocks[:2]:
                x = block(x)
            torch.testing.assert_close(two, m.ln_final(x))
        with pytest.raises(ValueError, match="clip skip must be between 1 and"):
            prompt_context(model, "a red circle", clip_skip=5)


@pytest.mark.parametrize("prompt, total, want", [
    ("a [cat:dog:0.5] on grass", 10, [(5, "a cat on grass"), (10, "a dog on grass")]),
    ("a [dog:3] x", 6, [(3, "a  x"), (6, "a dog x")]),
    ("a [cat::0.25] x", 8, [(2, "a cat x"), (8, "a  x")]),
    ("[cat|dog] x", 3, [(1, "cat x"), (2, "dog x"), (3, "cat x")]),
    ("a [red] (circle:1.2)", 4, [(4, "a [red] (circle:1.2)")]),
])
def test_prompt_editing_over_the_steps(prompt, total, want):
    from engine.prompts import steps

    assert steps(prompt, total) == want
    assert plain("a [cat:dog:0.5] (fur:1.2)") == "a dog fur"


def test_prompt_editing_switches_the_context_at_its_step():
    """The wrapper hands the sampler's model call at step i the context of the range step i falls in."""
    from engine.guidance import PromptEditDenoiser
    from engine.sampling import sample_euler

    used = []

    def inner(x, sigma, cond=None, uncond=None):
        used.append((round(float(cond["context"][0, 0, 0])), round(float(uncond["context"][0, 0, 0]))))
        return x * 0

    sigmas = torch.linspace(10, 0, 7, dtype=torch.float64)
    ctx = lambda v: torch.full((1, 1, 1), float(v))  # noqa: E731
    den = PromptEditDenoiser(inner, sigmas, [(2, ctx(1)), (6, ctx(2))], None)
    sample_euler(den, torch.ones(1, 1), sigmas, extra_args={"cond": {"context": ctx(0)}, "uncond": {"context": ctx(9)}})
    assert used == [(1, 9), (1, 9), (2, 9), (2, 9), (2, 9), (2, 9)]


def test_an_edited_prompt_draws_what_each_part_asks_for_over_its_steps(tmp_path):
    from conftest_models import write_tiny

    from engine.api import Engine, Request, Result

    path = write_tiny(tmp_path, "sd1")
    engine = Engine()
    try:
        def image(prompt):
            res = engine.wait(engine.submit(Request(model=str(path), prompt=prompt, width=32, height=32, steps=6,
                                                    seed=4)), 120)
            assert isinstance(res, Result), res
            return res.images[0].astype(int)

        cat, dog = image("a cat"), image("a dog")
        assert np.array_equal(image("a [cat:dog:0]"), dog) and np.array_equal(image("a [cat:dog:6]"), cat)
        halfway = image("a [cat:dog:0.5]")
        assert not np.array_equal(halfway, cat) and not np.array_equal(halfway, dog)
    finally:
        engine.shutdown()
