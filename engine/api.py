"""The engine's job API: one typed request in, a stream of events out, every event carrying its job id.

The app reaches the engine only through this module. Nothing here imports torch at import time; the worker
thread imports the pipelines on its first job.
"""
from __future__ import annotations

import itertools
import queue
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable, Literal

import numpy as np

from engine.memory import lean_allocator

Task = Literal["txt2img", "img2img", "inpaint", "layout", "semantic", "upscale"]
SAMPLERS = ("ddim", "plms", "ddpm", "euler_a", "euler", "heun", "dpmpp_2m", "dpmpp_2m_karras",
            "dpmpp_2m_sde_karras")
TASKS = ("txt2img", "img2img", "inpaint", "layout", "semantic", "upscale")
HIRES_MODES = ("auto", "on", "off", "dilated")  # Request.hires
SEAMLESS = ("off", "xy", "x", "y")  # Request.seamless: tileable along these axes
HIRES_UPSCALERS = ("lanczos", "model")  # "model": the default x4 upscaler (bundled world-sr4, SD x4, LDM-BSR)
HIRES_TASKS = ("txt2img", "layout", "semantic")  # made in two passes on large canvases; a start image makes them img2img
# Request.hires applies: img2img's first pass starts from the image scaled down; inpainting fills at the object's size
LARGE_CANVAS_TASKS = (*HIRES_TASKS, "img2img", "inpaint")


@dataclass
class Box:
    """A layout box in normalized image coordinates (origin top-left), with a class label and optional prompt."""

    label: str
    box: tuple[float, float, float, float]
    prompt: str | None = None


CONTROL_PREPROCESSORS = ("none", "canny", "scribble", "invert")  # Control.preprocessor


@dataclass
class Control:
    """One ControlNet unit (A1111's ControlNet unit, Krita AI's control layer): a guide image and the ControlNet
    that reads it, acting with `strength` from `start` to `end` (fractions of the way from noise to image)."""

    model: str  # a ControlNet file, or its name in a controlnet folder
    image: np.ndarray | None = None  # RGB uint8, any size: resized to the output
    preprocessor: str = "none"  # canny: edges of a picture; scribble: dark strokes on light paper; invert: lineart
    strength: float = 1.0
    start: float = 0.0
    end: float = 1.0


@dataclass
class TileSettings:
    """Tiled sampling and tiled autoencoder passes; 'auto' tiles only when the request would not fit."""

    mode: Literal["auto", "off", "on"] = "auto"
    tile: int = 64
    overlap: int = 16
    vae_tile: int = 512


@dataclass
class Request:
    """Everything needed to generate one batch (krita-ai-diffusion style: flat, self-contained)."""

    model: str = "default"
    task: Task = "txt2img"
    prompt: str = ""
    negative_prompt: str = ""
    image: np.ndarray | None = None  # txt2img/layout/semantic: start from it at `strength` (img2img under that input)
    mask: np.ndarray | None = None
    boxes: list[Box] = field(default_factory=list)
    labels: np.ndarray | None = None
    label_prompts: dict[int, str] = field(default_factory=dict)
    class_id: int | None = None
    sampler: str = "ddim"
    steps: int = 30
    cfg_scale: float = 5.0
    clip_skip: int = 1  # CLIP / OpenCLIP text encoders: read the n-th last layer (A1111's "Clip skip"; 1: as trained)
    eta: float = 0.0
    seed: int = 0
    variation_seed: int = 0  # A1111's variation seed: the seed's noise slerped towards this one's by variation_strength
    variation_strength: float = 0.0
    width: int | None = None
    height: int | None = None
    strength: float = 0.75
    batch_size: int = 1
    mask_grow: int = 0
    mask_feather: int = 0
    inpaint_crop: bool = False
    # inpaint: 1 fills the mask from noise; below 1 repaints what is there (A1111's denoising strength, 'original')
    inpaint_strength: float = 1.0
    upscaler: str = "model"
    upscale_by: int = 4  # upscale: 2 or 3 enlarge x4, then resize down to this factor (A1111's "Resize")
    noise_level: int = 20
    colour_fix: bool = True
    # two passes (hires fix); auto: canvas over 2.25x the training area; dilated: one pass, guidance.DilatedDenoiser
    hires: Literal["auto", "on", "off", "dilated"] = "auto"
    hires_strength: float = 0.5  # 0: keep the enlarged composition as it is
    hires_upscaler: str = "lanczos"  # how the composition is enlarged: one of HIRES_UPSCALERS
    refine_strength: float = 0.0
    refine_model: str = "default"
    planner: str = "default"  # layout with no boxes: the text-to-layout planner that places the prompt's objects
    best_of: int = 4  # layout with no boxes, batch size 1: draw this many (own plan and seed), keep the judge's pick
    judge: str = "default"  # best_of: the text model that reads each try's shapes against the prompt (engine.judge)
    seamless: Literal["off", "xy", "x", "y"] = "off"  # a tileable image: edges that meet along x, y or both
    control: tuple[Control, ...] = ()  # ControlNets (Stable Diffusion families), their effects summed
    vae: str = ""  # another autoencoder (A1111's SD VAE): a file, or its name in a vae folder; "": the model's own
    sketch_strength: float = 0.6  # layout, no image, shapes-world model: start from a sketch of the prompt's ground/sky
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    tiles: TileSettings = field(default_factory=TileSettings)
    preview_interval_s: float = 0.25
    full_preview_every: int = 0
    memory_budget_mb: int = 0


@dataclass(frozen=True)
class Event:
    job_id: int


@dataclass(frozen=True)
class Started(Event):
    device: str = ""
    dtype: str = ""
    family: str = ""


@dataclass(frozen=True)
class Progress(Event):
    step: int = 0
    total: int = 0
    elapsed_s: float = 0.0

    @property
    def eta_s(self) -> float:
        return self.elapsed_s / self.step * (self.total - self.step) if self.step else float("nan")


@dataclass(frozen=True)
class Preview(Event):
    step: int = 0
    image: np.ndarray | None = None


@dataclass(frozen=True)
class Result(Event):
    images: tuple[np.ndarray, ...] = ()
    parameters: str = ""
    seeds: tuple[int, ...] = ()
    elapsed_s: float = 0.0
    boxes: tuple[Box, ...] = ()  # the boxes the planner placed (layout from a prompt alone)


@dataclass(frozen=True)
class Failed(Event):
    message: str = ""
    detail: str = ""


@dataclass(frozen=True)
class Cancelled(Event):
    step: int = 0


class JobCancelled(Exception):
    """Raised inside a job by the step callback when its cancel flag is set."""


class EngineError(Exception):
    """A failure with a message meant for the user (bad input, bad checkpoint, out of memory)."""


class JobContext:
    """What a running job sees of the engine: progress, previews and the cancel flag."""

    def __init__(self, job_id: int, emit: Callable[[Event], None], cancel_flag: threading.Event, preview_interval_s: float):
        self.job_id = job_id
        self._emit = emit
        self._cancel = cancel_flag
        self.preview_interval_s = preview_interval_s
        self.t0 = time.perf_counter()
        self._last_preview = -1e9
        self.step = 0

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def check_cancel(self) -> None:
        if self._cancel.is_set():
            raise JobCancelled()

    def emit(self, event: Event) -> None:
        self._emit(event)

    def progress(self, step: int, total: int) -> None:
        self.step = step
        self._emit(Progress(self.job_id, step, total, time.perf_counter() - self.t0))
        self.check_cancel()

    def wants_preview(self) -> bool:
        return time.perf_counter() - self._last_preview >= self.preview_interval_s

    def preview(self, step: int, image: np.ndarray) -> None:
        self._last_preview = time.perf_counter()
        self._emit(Preview(self.job_id, step, image))


Runner = Callable[[Request, JobContext, dict], Result]


def _default_runner(request: Request, ctx: JobContext, cache: dict) -> Result:
    from engine.pipelines import run_request

    return run_request(request, ctx, cache)


class Engine:
    """A worker thread that owns the device and the loaded model; submit() returns a job id at once."""

    def __init__(self, on_event: Callable[[Event], None] | None = None, runner: Runner | None = None):
        self._on_event = on_event
        self._runner = runner or _default_runner
        lean_allocator()
        self.events: "queue.Queue[Event]" = queue.Queue()
        self._jobs: "queue.Queue[tuple[int, Request] | None]" = queue.Queue()
        self._cancel: dict[int, threading.Event] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.cache: dict = {}
        self._thread = threading.Thread(target=self._loop, name="latent-canvas-engine", daemon=True)
        self._thread.start()

    def submit(self, request: Request) -> int:
        with self._lock:
            job_id = next(self._ids)
            self._cancel[job_id] = threading.Event()
        self._jobs.put((job_id, request))
        return job_id

    def preload(self) -> threading.Event:
        """Import torch and the pipelines on the worker now (the one long GIL hold), not at the first Generate."""
        done = threading.Event()
        self._jobs.put((0, done))
        return done

    def cancel(self, job_id: int) -> None:
        with self._lock:
            flag = self._cancel.get(job_id)
        if flag is not None:
            flag.set()

    def next_event(self, timeout: float | None = None) -> Event:
        return self.events.get(timeout=timeout)

    def wait(self, job_id: int, timeout: float | None = None) -> Event:
        """Drain events until job_id ends; returns its Result, Failed or Cancelled event."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ev = self.next_event(left)
            if ev.job_id == job_id and isinstance(ev, (Result, Failed, Cancelled)):
                return ev

    def shutdown(self, timeout: float = 10.0) -> None:
        with self._lock:
            for flag in self._cancel.values():
                flag.set()
        self._jobs.put(None)
        self._thread.join(timeout)

    def _emit(self, event: Event) -> None:
        self.events.put(event)
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:
                traceback.print_exc()

    def _loop(self) -> None:
        while True:
            item = self._jobs.get()
            if item is None:
                return
            job_id, request = item
            if isinstance(request, threading.Event):
                if self._runner is _default_runner:
                    try:
                        from engine.pipelines import warm_up

                        warm_up()
                    except Exception:
                        traceback.print_exc()
                request.set()
                continue
            with self._lock:
                flag = self._cancel[job_id]
            ctx = JobContext(job_id, self._emit, flag, request.preview_interval_s)
            try:
                if flag.is_set():
                    raise JobCancelled()
                result = self._runner(request, ctx, self.cache)
                self._emit(result)
            except JobCancelled:
                self._emit(Cancelled(job_id, ctx.step))
            except EngineError as e:
                self._emit(Failed(job_id, str(e), traceback.format_exc()))
            except MemoryError:
                self._emit(Failed(job_id, "Out of memory: try a smaller size, tiling, or the CPU device.", traceback.format_exc()))
            except Exception as e:
                self._emit(Failed(job_id, describe_exception(e), traceback.format_exc()))
            finally:
                with self._lock:
                    self._cancel.pop(job_id, None)
                _release_memory()


def describe_exception(e: BaseException) -> str:
    """A one-line message for the user; CUDA out-of-memory gets advice instead of a traceback."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if "out of memory" in str(e).lower():
        return "Out of memory: try a smaller size, enable tiling, or use the CPU device."
    return f"{type(e).__name__}: {text}"


def _release_memory() -> None:
    import sys

    winograd = sys.modules.get("engine.models.winograd")
    if winograd is not None:
        winograd.release_buffers()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass(frozen=True)
class ModelInfo:
    """What the app shows about a checkpoint file before loading it."""

    path: str
    name: str
    family: str = ""
    tasks: tuple[str, ...] = ()
    label_names: tuple[str, ...] = ()
    label_colors: tuple[tuple[int, int, int], ...] = ()
    parameterization: str = ""
    image_size: int = 0
    error: str = ""
    vocabulary: tuple[str, ...] = ()  # a closed word-level text vocabulary (the bundled world models); () if open


def default_models_dir() -> str:
    from pathlib import Path

    return str(Path(__file__).resolve().parents[1] / "resources" / "models")


def user_models_dir() -> str:
    import platformdirs

    return str(platformdirs.user_data_path("latent-canvas") / "models")


LORA_NOTE = "a LoRA, not a model"  # in the error of a LoRA file opened as a model
CONTROLNET_NOTE = "a ControlNet, not a model"  # in the error of a ControlNet file opened as a model
ASSET_FOLDERS = {"lora": ("loras", "Lora", "lora"), "embedding": ("embeddings",), "vae": ("vae", "VAE"),
                 "controlnet": ("controlnet", "ControlNet")}
ASSET_EXTENSIONS = (".safetensors", ".pt", ".ckpt", ".bin", ".pth")


def asset_folders(kind: str, model_dirs: tuple[str, ...] = ()) -> list:
    """Where LoRA, textual-inversion embedding, VAE or ControlNet files are looked for: a loras / embeddings / vae /
    controlnet folder in each models folder (the given ones, the user's, the bundled one) and beside the given ones
    (A1111's models/Lora, models/VAE and models/ControlNet beside models/Stable-diffusion, and webui/embeddings;
    ComfyUI's models/loras, models/embeddings, models/vae and models/controlnet). They need not exist."""
    from pathlib import Path

    names = ASSET_FOLDERS[kind]
    given = [Path(d) for d in model_dirs]
    found = [r / n for r in (*given, Path(user_models_dir()), Path(default_models_dir())) for n in names]
    found += [r.parent / n for r in given for n in names]
    if kind == "embedding":
        found += [r.parent.parent / "embeddings" for r in given]
    return list(dict.fromkeys(found))


def list_assets(kind: str, model_dirs: tuple[str, ...] = ()) -> dict:
    """name -> file for every LoRA, embedding, VAE or ControlNet in asset_folders(); a name is the file's stem and
    subfolder."""
    files = {}
    for folder in asset_folders(kind, model_dirs):
        if folder.is_dir():
            for f in sorted(folder.rglob("*")):
                if f.suffix in ASSET_EXTENSIONS and f.is_file():
                    files.setdefault(f.relative_to(folder).with_suffix("").as_posix(), f)
    return files


def lora_folders(model_dirs: tuple[str, ...] = ()) -> list:
    return asset_folders("lora", model_dirs)


def list_loras(model_dirs: tuple[str, ...] = ()) -> list[str]:
    """The names a prompt can give as <lora:NAME:weight>."""
    return list(list_assets("lora", model_dirs))


def inspect_model(path: str) -> ModelInfo:
    """Detect a checkpoint's family from its header (no weights are loaded); errors become ModelInfo.error."""
    from pathlib import Path

    from engine.checkpoint import CheckpointError, inspect_file
    from engine.palette import label_colors

    try:
        facts = inspect_file(path)
    except CheckpointError as e:
        return ModelInfo(path=str(path), name=Path(path).stem, error=str(e))
    return ModelInfo(
        path=str(path),
        name=Path(path).stem,
        family=facts["family"],
        tasks=tuple(facts["tasks"]),
        label_names=tuple(facts.get("label_names", ())),
        label_colors=label_colors(tuple(facts.get("label_names", ()))),
        parameterization=facts["parameterization"],
        image_size=facts["image_size"],
        vocabulary=tuple(facts.get("vocabulary", ())),
    )


EXAMPLE_PROMPTS = ("a red circle above a blue square on grass under the sky",)


def unknown_words(vocabulary: tuple[str, ...], prompt: str) -> list[str]:
    """The prompt's words a closed-vocabulary text encoder reads as unknown (split as its WorldTokenizer splits them),
    each once, in order; [] for an open vocabulary."""
    import re

    from engine.prompts import PromptError, plain

    if not vocabulary:
        return []
    try:
        prompt = plain(prompt)
    except PromptError:
        pass
    known = {w.lower() for w in vocabulary}
    return list(dict.fromkeys(w for w in re.findall(r"\w+", prompt.lower()) if w not in known))


def prompt_tokenizer(info: ModelInfo):
    """The tokenizer a model's text encoder reads prompts with (no torch; CLIP's takes a second to build), or None
    for a model that reads no text: the world's words, BERT WordPiece for the LDM text models, CLIP BPE for SD."""
    from engine import tokenizers
    from engine.families import PRESETS

    if info.vocabulary:
        return tokenizers.WorldTokenizer(list(info.vocabulary))
    cond = PRESETS[info.family].cond if info.family in PRESETS else None
    if cond is None or cond.kind not in ("clip", "openclip", "bert") or cond.tokenizer == "layout":
        return None
    if cond.kind == "bert":
        return tokenizers.bert_tokenizer(cond.max_seq_len)
    return tokenizers.clip_tokenizer("eos" if cond.kind == "clip" else "zero", cond.max_seq_len)


def prompt_tokens(tokenizer, prompt: str) -> tuple[int, int]:
    """(tokens, chunks) of a prompt as the engine reads it: markup left out, a new chunk at BREAK and after every
    max_len - 2 tokens (an embedding counts as its name's tokens here)."""
    from engine.prompts import BREAK, PromptError, chunked, parse, steps

    variants = {text for _, text in steps(prompt, 100)}
    if len(variants) > 1:
        return max((prompt_tokens(tokenizer, v) for v in variants), key=lambda c: c[0])
    try:
        segments = parse(variants.pop()).segments
    except PromptError:
        return 0, 1

    def groups():
        for text, _ in segments:
            if text is BREAK:
                yield None
            else:
                yield from ([i] for i in tokenizer.encode(text))

    chunks = chunked(groups(), tokenizer.max_len - 2)
    return sum(len(c) for c in chunks), len(chunks)


def ignored_words_note(name: str, vocabulary: tuple[str, ...], prompt: str) -> str:
    """'NAME does not know w1, w2: ignored' for the prompt's unknown words; '' when there are none."""
    words = unknown_words(vocabulary, prompt)
    return f"{name} does not know {', '.join(words)}: ignored" if words else ""


def planner_vocabulary(path: str = "") -> tuple[str, ...]:
    """The words the text-to-layout planner reads (a layout job with a prompt and no boxes), from its file's header;
    () if there is no planner or it cannot be read."""
    import json
    from pathlib import Path

    from engine.checkpoint import CheckpointError, read_shapes

    p = Path(path) if path else Path(default_models_dir()) / "planner" / "world-planner.safetensors"
    try:
        return tuple(json.loads(read_shapes(p)[1]["latent_canvas.planner"])["vocab"])
    except (CheckpointError, OSError, KeyError, ValueError, TypeError):
        return ()


def example_prompt(vocabulary: tuple[str, ...]) -> str:
    """A prompt made only of a closed vocabulary's words, to show a new user what such a model reads; '' if none."""
    return next((p for p in EXAMPLE_PROMPTS if vocabulary and not unknown_words(vocabulary, p)), "")


def suggested_size(image_size: int) -> int:
    """Side of a new canvas for a model trained at image_size px: that size (SD1 512, SD2-v 768, LDM 256), or up to
    4x it for models trained below 256 px (the bundled 64 px models: 256, composed in two passes); 0 if unknown."""
    if image_size <= 0:
        return 0
    return max(image_size, min(4 * image_size, 256))


def suggested_hires(image_size: int, have_upscaler: bool = True) -> tuple[str, float]:
    """(hires_upscaler, hires_strength) for the canvas suggested_size gives: a model trained below 256 px, made at 4x
    its size, is enlarged by the x4 upscaler model without a repaint (the bundled 64 px text and layout models repaint
    a 4x enlargement into box-filling blocks); others get Lanczos and a 0.5 repaint (A1111's hires fix)."""
    return ("model", 0.0) if have_upscaler and 0 < image_size < 256 else ("lanczos", 0.5)


SD_GUIDED = ("sd1", "sd1-inpainting", "sd2", "sd2-v", "sd2-inpainting")


def suggested_cfg(family: str) -> float:
    """Guidance for a family: 3 for the models this project trains (family 'world-...'; the bundled models' figures
    are at 3, which beat 2, 4 and 5 for text and layout), 7.5 for Stable Diffusion (its txt2img script's and
    diffusers' default), 9 for its x4 upscaler (diffusers' upscale pipeline default), the request's 5 (the LDM
    txt2img script's) otherwise."""
    if family.startswith("world-"):
        return 3.0
    if family == "sd-x4-upscaler":
        return 9.0
    return 7.5 if family in SD_GUIDED else Request.cfg_scale


def default_model_for(task: str) -> ModelInfo | None:
    """The bundled model that serves a task best (the one whose family lists the task earliest)."""
    from pathlib import Path

    found = [inspect_model(str(f)) for f in sorted(Path(default_models_dir()).glob("*.safetensors"))]
    found = [m for m in found if not m.error and task in m.tasks]
    return min(found, key=lambda m: m.tasks.index(task)) if found else None


def list_models(extra_dirs: tuple[str, ...] = ()) -> list[ModelInfo]:
    """Every .safetensors/.ckpt in the default, user and extra folders, default models first."""
    from pathlib import Path

    found = []
    for folder in (default_models_dir(), user_models_dir(), *extra_dirs):
        p = Path(folder)
        if p.is_dir():
            found += [inspect_model(str(f)) for f in sorted(p.iterdir()) if f.suffix in (".safetensors", ".ckpt")]
    return found
