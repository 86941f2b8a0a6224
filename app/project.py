"""Project files (a zip of layer PNGs + manifest JSON), atomic writes, autosave and crash recovery. No Qt."""
from __future__ import annotations

import io
import json
import os
import tempfile
import time
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from app.document import Document, HistoryEntry, LayoutBox, Params

FORMAT = "latent-canvas-project"
VERSION = 1
SUFFIX = ".lcproj"


class ProjectError(Exception):
    """A project file that cannot be read (with a message for the user)."""


def data_dir() -> Path:
    """Per-user data folder (platformdirs); LATENT_CANVAS_DATA_DIR overrides it (tests, portable installs)."""
    env = os.environ.get("LATENT_CANVAS_DATA_DIR")
    if env:
        return Path(env)
    import platformdirs

    return platformdirs.user_data_path("latent-canvas")


def atomic_write(path: str | os.PathLike, write: Callable[[io.BufferedWriter], None]) -> None:
    """Write through a temporary file in the same folder, fsync, then os.replace: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=4)
    return buf.getvalue()


def _read_png(z: zipfile.ZipFile, name: str) -> np.ndarray:
    with z.open(name) as f:
        return np.array(Image.open(io.BytesIO(f.read())))


def manifest(doc: Document) -> dict:
    return dict(
        format=FORMAT, version=VERSION, width=doc.width, height=doc.height, has_image=doc.has_image,
        sketched=doc.sketched,
        region=list(doc.region) if doc.region else None, boxes=[asdict(b) for b in doc.boxes],
        params=asdict(doc.params), task_override=doc.task_override,
        history=[dict(parameters=h.parameters, seeds=list(h.seeds), params=h.params, task=h.task, created=h.created,
                      region=list(h.region) if h.region else None,
                      images=[f"history/{i}_{j}.png" for j in range(len(h.images))]) for i, h in enumerate(doc.history)],
        saved=time.time())


def write_project(doc: Document, f) -> None:
    m = manifest(doc)
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as z:
        z.writestr("manifest.json", json.dumps(m, indent=1))
        z.writestr("image.png", _png(doc.image))
        z.writestr("mask.png", _png(doc.mask))
        z.writestr("labels.png", _png((doc.labels.astype(np.int32) + 1).astype(np.uint16)))
        if doc.control_image is not None:
            z.writestr("control.png", _png(doc.control_image))
        for h, meta in zip(doc.history, m["history"]):
            if len(h.png) != len(h.images):
                h.png = [_png(img) for img in h.images]
            for data, name in zip(h.png, meta["images"]):
                z.writestr(name, data)


def save(doc: Document, path: str | os.PathLike, mark_clean: bool = True) -> None:
    """Save atomically; the document remembers the path and becomes clean."""
    atomic_write(path, lambda f: write_project(doc, f))
    if mark_clean:
        doc.path = str(path)
        doc.mark_clean()


def load(path: str | os.PathLike) -> Document:
    try:
        with zipfile.ZipFile(path) as z:
            m = json.loads(z.read("manifest.json"))
            if m.get("format") != FORMAT:
                raise ProjectError(f"{Path(path).name} is not a Latent Canvas project")
            if int(m.get("version", 0)) > VERSION:
                raise ProjectError(f"{Path(path).name} was saved by a newer version (format {m['version']})")
            doc = Document(m["width"], m["height"])
            doc.image = _read_png(z, "image.png")[..., :3].astype(np.uint8)
            doc.mask = _read_png(z, "mask.png").astype(np.uint8)
            doc.labels = (_read_png(z, "labels.png").astype(np.int32) - 1).astype(np.int16)
            doc.has_image, doc.sketched = bool(m.get("has_image")), bool(m.get("sketched"))
            if "control.png" in z.namelist():
                doc.control_image = _read_png(z, "control.png")[..., :3].astype(np.uint8)
            doc.boxes = [LayoutBox(b["label"], tuple(b["rect"]), b.get("prompt")) for b in m.get("boxes", [])]
            doc.params = Params.from_dict(m.get("params", {}))
            doc.task_override = m.get("task_override")
            doc.region = tuple(int(v) for v in m["region"]) if m.get("region") else None
            doc.history = [HistoryEntry([_read_png(z, n)[..., :3] for n in h["images"]], h.get("parameters", ""),
                                        h.get("seeds", []), h.get("params", {}), h.get("task", "txt2img"),
                                        h.get("created", 0.0), tuple(h["region"]) if h.get("region") else None,
                                        [z.read(n) for n in h["images"]])
                            for h in m.get("history", [])]
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, OSError, ValueError) as e:
        raise ProjectError(f"Cannot open {Path(path).name}: {e}") from e
    if doc.image.shape[:2] != (doc.height, doc.width) or (doc.region and not doc.region_fits(doc.region)):
        raise ProjectError(f"Cannot open {Path(path).name}: layer size or region does not match the manifest")
    doc.path = str(path)
    doc.mark_clean()
    return doc


class Recovery:
    """Autosave plus a session marker; a marker left behind at start means the last session crashed."""

    def __init__(self, folder: str | os.PathLike | None = None):
        self.folder = Path(folder) if folder is not None else data_dir() / "recovery"
        self.marker = self.folder / "session.running"
        self.autosave_path = self.folder / f"autosave{SUFFIX}"
        self.crashed = False

    def start(self) -> bool:
        """Begin a session; returns True when the previous one ended without finish() and left an autosave."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.crashed = self.marker.exists() and self.autosave_path.exists()
        self.marker.write_text(json.dumps(dict(pid=os.getpid(), started=time.time())))
        return self.crashed

    def autosave(self, doc: Document) -> None:
        meta = self.folder / "autosave.json"
        save(doc, self.autosave_path, mark_clean=False)
        atomic_write(meta, lambda f: f.write(json.dumps(dict(path=doc.path, time=time.time())).encode()))

    def recover(self) -> Document:
        """The autosaved document, dirty, pointing at the file it came from (if any)."""
        doc = load(self.autosave_path)
        try:
            doc.path = json.loads((self.folder / "autosave.json").read_text()).get("path")
        except (OSError, ValueError):
            doc.path = None
        doc._params_dirty = True
        return doc

    def discard(self) -> None:
        for p in (self.autosave_path, self.folder / "autosave.json"):
            p.unlink(missing_ok=True)

    def finish(self) -> None:
        """Clean exit: the marker and the autosave go."""
        self.discard()
        self.marker.unlink(missing_ok=True)
