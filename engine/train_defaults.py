"""train-defaults: the bundled models' recipes (first stages and LDMs), their schedule on worker processes, and the run."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from engine.train import DEFAULT_NAMES, RunSpec, ae_config, train_ae
from engine.train_ldm import _common, train_ldm

# The first stages of train-defaults by name: KL-f4 with z latent channels and the gradient term weighted by edge.
# "ae" (z 4, edge 2.0) keeps star points and triangle corners (the detector's caption-match ceiling on reconstructions:
# 0.66 with z 3 and edge 0.5, 0.97 with these; 32 held-out scenes) at a higher PSNR than z 3 reached even with its
# decoder fine-tune, and txt2img on it went from caption match 0.34 to 0.50 (session 15, resources/models/README.md).
# "ae3" (z 3, edge 0.5) gives smoother latents: with its decoder fine-tune it suits the super-resolution model (its
# PSNR gain over bicubic: +1.55 dB against +1.03 on "ae") and semantic synthesis at 4x the size, whose colours drift on
# "ae" (session 16).
# latent_blur 0.6 makes the decoder forgive smoothed latents, yet LDMs on it drew no better (session 12).
FIRST_STAGES = {"ae": {"z": 4, "edge": 2.0, "latent_blur": 0.0}, "ae3": {"z": 3, "edge": 0.5, "latent_blur": 0.0}}
FIRST_STAGE = FIRST_STAGES["ae"]

# What ships in resources/models: minutes of training per model (1 thread each, two runs side by side on 2 cores;
# "threads": a run that has the machine to itself after the others), ldm_config overrides, and which first stage
# (a FIRST_STAGES name; "NAME-sharp": that one with its decoder fine-tuned, the same latents, which buys PSNR but
# rounds corners again). layout: a UNet 64 wide at the 16x16 and 8x8 levels (128 at 4x4), an eighth of each batch
# multi-scale: 5001 steps, box recall 0.83 on 128 held-out scenes against 0.72 at width 32 (session 17); txt2img at
# that width, or deeper (1, 2, 4), got fewer steps and drew worse (caption match 0.22 / 0.20 against 0.41).
# txt2img with a pooled caption vector (ldm_config pooled), Min-SNR gamma 20, the plain v loss or a leaner UNet (32
# wide, channel_mult 1,1,2) drew no better than its recipe rerun beside them, and the recipe itself scored 0.31 after
# 10901 steps against 0.41 after 15201: its steps are what limit it (session 18).
# Weighting the loss towards object cells biases the denoiser (0.09); oversampling multi-object scenes and
# cross-attention at 16x16 tie with the recipe per minute (session 20, on an AVX2 machine: about 9k steps in 45 min).
# txt2img trains with Muon (engine.optim) since session 21. On the AVX2 machine, caption match on 128 held-out scenes:
# AdamW 0.21 and 0.20 (about 9k steps); Muon at lr 1e-3 0.33, 0.33 and 0.40 (seed 1), at lr 2e-3 0.40 (session 21),
# at lr 3e-3 0.47 (seeds 1 and 2: 0.43, 0.38), at 4e-3 0.34, at 6e-3 0.27 (session 22, seed 0 unless marked,
# 5.9k-7k steps); session 15's AdamW file, trained on a 1.6x faster machine, 0.41. A token grounding loss
# (engine.grounding, weight 0.01) localised the object words' attention but scored 0.45 against 0.47 in 12% fewer
# steps (session 22). Batches of 32 (1.6x the samples per minute) averaged 0.47 over seeds 0, 1, 2 (0.46, 0.45, 0.51)
# against 0.43 at 16; 64 gave 0.45. The batch-32 seed-2 run ships (sessions 23-24); run again it scored 0.51 again,
# so its seed is in the recipe. A 4-layer encoder (0.46), layout's 64-wide UNet (0.13) and 15 minutes at 32 px
# before 30 at 64 (0.30) did not help (session 24).
# Session 25: scenes weighted 1:1.5:2 or 1:2:4 by object count (train-ldm --objects) 0.50 / 0.48; one phrase
# token per 'colour shape' 0.46 / 0.50. On 512 scenes the shipped file scores 0.45 (0.51 / 0.36 / 0.45 / 0.46 per
# 128), and on scenes 128-255 every probe file scores 0.29-0.42: the first 128, which ranked the runs, are easy ones.
# Session 26 (scenes 128-511, where the shipped file scores 0.42): timesteps lognormal in sigma (EDM) 0.28, an lr
# cooldown to zero 0.36; the recipe for 65 minutes 0.47 (1.36x the steps), so 0.8 would take about ten times its steps.
# Session 34: self-conditioning (the previous x0 estimate as 4 more input channels) 0.49 against the shipped file's
# 0.44 in the same plain DDIM loop, in 14% more steps: within the seed spread. An f8 first stage (ae_config factor 8)
# halves the UNet step but caps caption match on its own reconstructions at 0.52 (z 8) / 0.63 (z 16) against 0.95.
# layout with Muon at lr 3e-3: box recall 0.85 on 128 scenes and shape right 0.90 after 2675 steps, against 0.83 and
# 0.86 for session 17's AdamW file (5001 steps); it ships (session 23).
RECIPES = {
    "txt2img": {"minutes": 45.0, "batch": 32, "cfg": {"n_layer": 2, "importance": True}, "first_stage": "ae",
                "optimizer": "muon", "lr": 3e-3, "seed": 2},
    "layout": {"minutes": 45.0, "batch": 16, "cfg": {"n_layer": 2, "raster": True, "multiscale": 0.125, "importance": True,
                                                     "model_channels": 64, "channel_mult": (1, 1, 2)},
               "first_stage": "ae", "optimizer": "muon", "lr": 3e-3},
    "semantic": {"minutes": 43.0, "cfg": {"multiscale": 0.75}, "first_stage": "ae3-sharp"},
    "inpaint": {"minutes": 45.0, "cfg": {}, "first_stage": "ae"},
    "sr4": {"minutes": 45.0, "cfg": {"min_snr": 0.0}, "first_stage": "ae3-sharp", "threads": 2},
}


def first_stage_runs(kinds) -> tuple[list[str], list[str]]:
    """The FIRST_STAGES the kinds' recipes need (their own or under a decoder fine-tune), and the fine-tunes."""
    wanted = {RECIPES[k]["first_stage"] for k in kinds}
    return sorted({w.removesuffix("-sharp") for w in wanted}), sorted(w for w in wanted if w.endswith("-sharp"))


def _ae_run(args, name: str) -> dict:
    """One first stage's train-ae settings under train-defaults (0 steps: no step limit)."""
    quick = args.quick
    return dict(FIRST_STAGES[name], steps=args.steps or (30 if quick else 0), minutes=0.0 if quick else args.ae_minutes,
                batch=16, crop=32, lr=1e-3, seed=base_seed(args), pool=64 if quick else args.pool)


def _ae_cmd(args, name: str, runs: Path) -> list[str]:
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in _ae_run(args, name).items()]
    return [sys.executable, "-m", "engine", "train-ae", "--run-dir", str(runs / name), "--ae-kind", args.ae_kind,
            *flags, "--threads", "1", "--no-progress"]


def train_first_stages(args, names: list[str], runs: Path) -> dict:
    """Trains the named FIRST_STAGES that runs/NAME/ae.pt lacks: in this process, or side by side as `train-ae`
    processes on one thread each when there are several and `--jobs` allows; returns each one's facts."""
    import os
    import subprocess

    todo = [n for n in names if not (runs / n / "ae.pt").exists()]
    if len(todo) > 1 and args.jobs > 1:
        side, env = todo[: args.jobs], dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        procs = []
        for name in side:
            (runs / name).mkdir(parents=True, exist_ok=True)
            log = open(runs / name / "train.log", "w")
            procs.append((subprocess.Popen(_ae_cmd(args, name, runs), stdout=log, stderr=subprocess.STDOUT, env=env), log))
            print(f"first stage {name}: started, 1 thread (log {runs / name / 'train.log'})", flush=True)
        for name, (proc, log) in zip(side, procs):
            proc.wait()
            log.close()
            if proc.returncode:
                raise RuntimeError(f"first stage {name} failed (exit {proc.returncode}), see {runs / name / 'train.log'}")
        return {n: _ae_facts(runs, n) for n in side} | train_first_stages(args, names, runs)
    for name in todo:
        r = _ae_run(args, name)
        spec = RunSpec(runs / name, steps=r["steps"] or 10**9, minutes=r["minutes"], batch=r["batch"], lr=r["lr"],
                       seed=r["seed"], pool_size=r["pool"], progress=not args.no_progress, crop=r["crop"])
        train_ae(spec, ae_config(kind=args.ae_kind, z=r["z"]), None, 64, edge=r["edge"], latent_blur=r["latent_blur"])
        print(json.dumps({name: _ae_facts(runs, name)}), flush=True)
    return {n: _ae_facts(runs, n) for n in todo}


def _ae_facts(runs: Path, name: str) -> dict:
    return {k: v for k, v in json.loads((runs / name / "ae.json").read_text()).items() if k != "config"}


def _longest_first(minutes: dict[str, float]) -> list[str]:
    return sorted(minutes, key=lambda k: (-minutes[k], k))


def lanes(minutes: dict[str, float], jobs: int) -> tuple[list[list[str]], float]:
    """Longest-processing-time-first list scheduling (Graham 1969): each kind, longest first, goes to the worker that
    frees up first; returns every worker's kinds in order and the makespan (wall minutes of the LDM phase)."""
    loads, plan = [0.0] * max(1, jobs), [[] for _ in range(max(1, jobs))]
    for kind in _longest_first(minutes):
        i = min(range(len(loads)), key=lambda j: (loads[j], j))
        plan[i].append(kind)
        loads[i] += minutes[kind]
    return plan, max(loads)


def recipe_batch(kind: str, batch: int = 0) -> int:
    """Batch of a kind's run: `--batch` when given (non-zero), else its recipe's `batch` (32 if unset)."""
    return batch or RECIPES[kind].get("batch", 32)


def recipe_lr(kind: str, lr: float | None = None) -> float:
    """Peak learning rate of a kind's run: `--lr` when given, else its recipe's `lr` (1e-3 if unset)."""
    return lr or RECIPES[kind].get("lr", 1e-3)


def recipe_seed(kind: str, seed: int | None = None) -> int:
    """Seed of a kind's run: `--seed` when given, else its recipe's `seed` (0 if unset)."""
    return RECIPES[kind].get("seed", 0) if seed is None else seed


def base_seed(args) -> int:
    """Seed of the first stages and decoder fine-tunes: `--seed` when given, else 0."""
    return 0 if args.seed is None else args.seed


def recipe_optimizer(kind: str, optimizer: str | None = None) -> str:
    """Optimizer of a kind's run: `--optimizer` when given, else its recipe's `optimizer` (AdamW if unset)."""
    return optimizer or RECIPES[kind].get("optimizer", "adamw")


def recipe_threads(kind: str, jobs: int) -> int:
    """Threads of a kind's run under `--jobs`: its recipe's `threads` (1 if unset), at most the jobs' cores."""
    return max(1, min(RECIPES[kind].get("threads", 1), jobs))


def schedule(minutes: dict[str, float], threads: dict[str, int], jobs: int) -> tuple[list[list[str]], list[str], float]:
    """`lanes` for the one-thread kinds, then each kind that wants more threads alone, longest first; with the
    planned wall minutes of both phases. With one job everything is one lane."""
    solo = [k for k in _longest_first(minutes) if jobs > 1 and threads.get(k, 1) > 1]
    plan, wall = lanes({k: m for k, m in minutes.items() if k not in solo}, jobs)
    return plan, solo, wall + sum(minutes[k] for k in solo)


def _worker_cmd(args, kind: str, runs: Path, out: Path, threads: int = 1) -> list[str]:
    cmd = [sys.executable, "-m", "engine", "train-defaults", "--only", kind, "--jobs", "1", "--threads", str(threads),
           "--runs", str(runs), "--out", str(out), "--overwrite", "--summary", str(runs / kind / "summary.json"),
           "--batch", str(recipe_batch(kind, args.batch)), "--lr", str(recipe_lr(kind, args.lr)),
           "--optimizer", recipe_optimizer(kind, args.optimizer), "--seed", str(recipe_seed(kind, args.seed)),
           "--pool", str(args.pool), "--steps", str(args.steps), "--minutes-per-model", str(args.minutes_per_model),
           "--ae-kind", args.ae_kind, "--no-progress"]
    return cmd + (["--quick"] if args.quick else [])


def _train_parallel(args, kinds: list[str], runs: Path, out: Path) -> tuple[dict, int]:
    """Runs the kinds as `train-defaults --only KIND --jobs 1` worker processes in the order `schedule` plans: the
    one-thread kinds args.jobs at a time, longest first onto whichever worker frees up, then each kind whose recipe
    asks for more threads alone with them (at most args.jobs); gathers each worker's summary."""
    minutes = {k: args.minutes_per_model or RECIPES[k]["minutes"] for k in kinds}
    plan, solo, wall = schedule(minutes, {k: recipe_threads(k, args.jobs) for k in kinds}, args.jobs)
    print(json.dumps({"plan": plan, "then": solo, "planned_minutes": wall}), flush=True)
    summary, failed = _run_workers(args, [k for k in _longest_first(minutes) if k not in solo], args.jobs, 1, runs, out)
    for kind in solo:
        part, bad = _run_workers(args, [kind], 1, recipe_threads(kind, args.jobs), runs, out)
        summary.update(part)
        failed += bad
    return summary, failed


def _run_workers(args, queue: list[str], width: int, threads: int, runs: Path, out: Path) -> tuple[dict, int]:
    """Worker processes for the queued kinds, `width` at a time with `threads` threads each."""
    import os
    import subprocess

    queue = list(queue)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    running, summary, failed = {}, {}, 0
    while queue or running:
        while queue and len(running) < width:
            kind = queue.pop(0)
            (runs / kind).mkdir(parents=True, exist_ok=True)
            (runs / kind / "summary.json").unlink(missing_ok=True)
            log = open(runs / kind / "train.log", "w")
            proc = subprocess.Popen(_worker_cmd(args, kind, runs, out, threads), stdout=log, stderr=subprocess.STDOUT,
                                    env=env)
            running[kind] = (proc, log)
            print(f"{kind}: started, {threads} thread(s) (log {runs / kind / 'train.log'})", flush=True)
        time.sleep(0.5 if args.quick else 5.0)
        for kind, (proc, log) in list(running.items()):
            if proc.poll() is None:
                continue
            log.close()
            del running[kind]
            part = runs / kind / "summary.json"
            if proc.returncode == 0 and part.exists():
                summary[kind] = json.loads(part.read_text())[kind]
            else:
                failed += 1
                summary[kind] = {"kind": kind, "error": f"exit {proc.returncode}, see {runs / kind / 'train.log'}"}
            print(json.dumps(summary[kind]), flush=True)
    return summary, failed


def train_default_planner(args, runs: Path, out: Path) -> dict:
    """The text-to-layout planner by engine.planner.RECIPE on every thread, unless its file is there already."""
    from engine import planner

    target = out / "planner" / "world-planner.safetensors"
    if target.exists() and not args.overwrite:
        print(f"{target} exists, skipped", flush=True)
        return {"skipped": str(target)}
    r, quick, t0 = planner.RECIPE, args.quick, time.time()
    torch.set_num_threads(max(1, args.threads, args.jobs))
    spec = RunSpec(runs / "planner", steps=args.steps or (30 if quick else r["steps"]),
                   batch=16 if quick else r["batch"], lr=r["lr"],
                   seed=r["seed"] if args.seed is None else args.seed, progress=not args.no_progress)
    planner.train_planner(spec, target, examples=500 if quick else r["examples"])
    facts = dict(json.loads(planner.metadata_of(target))["training"], wall_minutes=round((time.time() - t0) / 60, 2))
    print(json.dumps({"planner": facts}), flush=True)
    return facts


def cmd_train_defaults(args) -> int:
    """The text-to-layout planner, the KL-f4 first stages the recipes name (side by side, and decoder fine-tunes where
    asked), then the five world LDMs by RECIPES, `--jobs` worker processes at a time; resumable run by run."""
    from engine.train import finetune_decoder

    torch.set_num_threads(max(1, args.threads, args.jobs))  # the first stage has the machine to itself
    runs, out = Path(args.runs), Path(args.out)
    quick = args.quick
    t_all = time.time()
    steps = dict(steps=args.steps or (30 if quick else 10**9), minutes=0.0, batch=8 if quick else args.batch or 32,
                 seed=base_seed(args), lr=args.lr or 1e-3, pool_size=64 if quick else args.pool,
                 progress=not args.no_progress)
    kinds = args.only.split(",") if args.only else [*DEFAULT_NAMES, "planner"]
    planned = train_default_planner(args, runs, out) if "planner" in kinds else None
    kinds = [k for k in kinds if k != "planner"]
    bases, sharps = first_stage_runs(kinds)
    summary = train_first_stages(args, bases, runs)
    if planned is not None:
        summary["planner"] = planned
    for sharp in sharps:
        if not (runs / sharp / "ae.pt").exists():
            spec = RunSpec(runs / sharp, **dict(steps, minutes=0.0 if quick else args.decoder_minutes, lr=3e-4,
                                                batch=16, warmup=20))
            ae = finetune_decoder(spec, runs / sharp.removesuffix("-sharp") / "ae.pt", eval_n=8 if quick else 256)
            summary[sharp] = {k: v for k, v in ae.items() if k not in ("state_dict", "config")}
            print(json.dumps({sharp: summary[sharp]}), flush=True)
    targets = {kind: out / f"{DEFAULT_NAMES[kind]}.safetensors" for kind in kinds}
    todo = []
    for kind, target in targets.items():
        if target.exists() and not args.overwrite:
            print(f"{target} exists, skipped", flush=True)
        else:
            todo.append(kind)
    parallel, failed = args.jobs > 1 and len(todo) > 1, 0
    if parallel:
        part, failed = _train_parallel(args, todo, runs, out)
        summary.update(part)
    for kind in [] if parallel else todo:
        recipe = RECIPES[kind]
        minutes = 0.0 if quick else (args.minutes_per_model or recipe["minutes"])
        torch.set_num_threads(max(1, args.threads) if args.jobs == 1 else recipe_threads(kind, args.jobs))
        t0 = time.time()
        batch = 8 if quick else recipe_batch(kind, args.batch)
        spec = RunSpec(runs / kind, **dict(steps, minutes=minutes, batch=batch, lr=recipe_lr(kind, args.lr),
                                           optimizer=recipe_optimizer(kind, args.optimizer),
                                           seed=recipe_seed(kind, args.seed)))
        info = train_ldm(kind, spec, runs / recipe["first_stage"] / "ae.pt", targets[kind], **recipe["cfg"])
        summary[kind] = dict(info, wall_minutes=round((time.time() - t0) / 60, 2))
        print(json.dumps(summary[kind]), flush=True)
    if not args.summary:
        summary["wall_minutes"] = round((time.time() - t_all) / 60, 2)
    path = Path(args.summary) if args.summary else runs / "summary.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2))
    return 1 if failed else 0


def add_command(sub) -> None:
    """Registers train-defaults on the `python -m engine` parser."""
    p = sub.add_parser("train-defaults",
                       help="train the bundled models: the layout planner, KL-f4 first stages, then five world LDMs")
    _common(p, 0.0)
    p.add_argument("--out", default="resources/models")
    p.add_argument("--runs", default="runs/defaults")
    p.add_argument("--minutes-per-model", type=float, default=0.0, help="0: each kind's RECIPES minutes")
    p.add_argument("--ae-minutes", type=float, default=20.0)
    p.add_argument("--decoder-minutes", type=float, default=10.0, help="each decoder fine-tune a recipe asks for")
    p.add_argument("--quick", action="store_true", help="a few steps each (smoke test)")
    p.add_argument("--only", default=None, help="comma-separated kinds (planner among them)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--jobs", type=int, default=2, help="worker processes at once, one thread each: first "
                   "stages side by side, then the LDMs, longest kinds first")
    p.add_argument("--summary", default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_train_defaults, batch=0, lr=None, optimizer=None, seed=None)  # each kind's RECIPES values
