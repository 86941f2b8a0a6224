"""Application settings persisted as JSON in the platformdirs config folder. No Qt."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from app.project import atomic_write, data_dir

DEVICES = ("auto", "cuda", "cpu")
PRECISIONS = ("auto", "float32", "bfloat16", "float16")
TILE_MODES = ("auto", "off", "on")
RECENT = 10


@dataclass
class AppSettings:
    """What the settings dialog edits; every field has a safe default."""

    models_dir: str = ""
    outputs_dir: str = ""
    device: str = "auto"
    precision: str = "auto"
    tile_mode: str = "auto"
    tile_size: int = 64
    tile_overlap: int = 16
    preview_interval_s: float = 0.25
    memory_budget_mb: int = 0
    autosave_interval_s: int = 60
    max_image_side: int = 2048
    recent_files: list = field(default_factory=list)  # newest first, at most RECENT
    styles: list = field(default_factory=list)  # [{"name", "prompt", "negative_prompt"}], A1111's prompt styles

    def style_names(self) -> list[str]:
        return [s["name"] for s in self.styles]

    def style(self, name: str) -> dict | None:
        return next((s for s in self.styles if s["name"] == name), None) if name else None

    def outputs_path(self) -> Path:
        return Path(self.outputs_dir) if self.outputs_dir else data_dir() / "outputs"

    def extra_model_dirs(self) -> tuple[str, ...]:
        return (self.models_dir,) if self.models_dir else ()


def config_path() -> Path:
    env = os.environ.get("LATENT_CANVAS_DATA_DIR")
    if env:
        return Path(env) / "settings.json"
    import platformdirs

    return platformdirs.user_config_path("latent-canvas") / "settings.json"


def load_settings(path: str | os.PathLike | None = None) -> AppSettings:
    """Unknown keys are dropped and a broken file gives defaults (the app must start anyway)."""
    path = Path(path) if path else config_path()
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return AppSettings()
    names = {f.name: f.type for f in fields(AppSettings)}
    s = AppSettings()
    for k, v in raw.items() if isinstance(raw, dict) else ():
        if k in names:
            try:
                setattr(s, k, type(getattr(s, k))(v))
            except (TypeError, ValueError):
                pass
    if s.device not in DEVICES:
        s.device = "auto"
    if s.precision not in PRECISIONS:
        s.precision = "auto"
    if s.tile_mode not in TILE_MODES:
        s.tile_mode = "auto"
    s.recent_files = [p for p in s.recent_files if isinstance(p, str)][:RECENT]
    s.styles = [{k: str(st.get(k, "")) for k in ("name", "prompt", "negative_prompt")} for st in s.styles
                if isinstance(st, dict) and isinstance(st.get("name"), str) and st["name"]]
    return s


def save_settings(s: AppSettings, path: str | os.PathLike | None = None) -> None:
    path = Path(path) if path else config_path()
    atomic_write(path, lambda f: f.write(json.dumps(asdict(s), indent=1).encode()))
