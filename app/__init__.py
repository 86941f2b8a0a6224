"""Latent Canvas desktop application (PySide6). Reaches the engine only through engine.api."""
