"""Latent Canvas engine: LDM model families, checkpoint loading, samplers and pipelines (torch, no Qt)."""


def load(path, device="cpu", dtype=None, **kw):
    """Load a checkpoint (.safetensors or .ckpt) with its original key names; see engine.checkpoint.load."""
    from engine.checkpoint import load as _load

    return _load(path, device=device, dtype=dtype, **kw)
