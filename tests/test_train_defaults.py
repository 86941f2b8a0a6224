"""train-defaults --jobs: longest-first scheduling of the LDM kinds onto worker processes, and a tiny end-to-end run."""
import argparse
import inspect
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.train import add_commands
from engine.train_defaults import (FIRST_STAGES, RECIPES, _ae_cmd, _ae_run, _worker_cmd, base_seed, first_stage_runs,
                                   lanes, recipe_lr, recipe_optimizer, recipe_seed, schedule)

ROOT = Path(__file__).resolve().parents[1]


def _parser():
    p = argparse.ArgumentParser()
    add_commands(p.add_subparsers(dest="command"))
    return p


def _best_makespan(minutes: dict, jobs: int) -> float:
    kinds = list(minutes)
    best = float("inf")
    for who in itertools.product(range(jobs), repeat=len(kinds)):
        loads = [sum(minutes[k] for k, w in zip(kinds, who) if w == j) for j in range(jobs)]
        best = min(best, max(loads))
    return best


def test_lanes_cover_every_kind_once_and_balance_the_shipped_recipes():
    minutes = {k: r["minutes"] for k, r in RECIPES.items()}
    plan, wall = lanes(minutes, 2)
    assert sorted(k for lane in plan for k in lane) == sorted(minutes)
    assert wall == max(sum(minutes[k] for k in lane) for lane in plan)
    assert wall == _best_makespan(minutes, 2)
    assert wall < sum(minutes.values())
    for lane in plan:
        assert [minutes[k] for k in lane] == sorted((minutes[k] for k in lane), reverse=True)


def test_lanes_pair_long_with_short_and_degenerate_cases():
    plan, wall = lanes({"a": 40, "b": 30, "c": 20, "d": 10}, 2)
    assert wall == 50 and sorted(map(sorted, plan)) == [["a", "d"], ["b", "c"]]
    assert lanes({"a": 40, "b": 30}, 1) == ([["a", "b"]], 70)
    plan, wall = lanes({"a": 40, "b": 30}, 4)
    assert wall == 40 and sum(map(len, plan)) == 2


def test_schedule_runs_threaded_recipes_alone_after_the_lanes():
    plan, solo, wall = schedule({"a": 40, "b": 30, "c": 20, "d": 10}, {"b": 2}, 2)
    assert solo == ["b"] and sorted(map(sorted, plan)) == [["a"], ["c", "d"]] and wall == 40 + 30
    plan, solo, wall = schedule({"a": 40, "b": 30}, {"b": 2}, 1)
    assert (plan, solo, wall) == ([["a", "b"]], [], 70)


def test_shipped_schedule_fits_the_three_hour_budget_with_every_kind_once():
    minutes = {k: r["minutes"] for k, r in RECIPES.items()}
    threads = {k: r.get("threads", 1) for k, r in RECIPES.items()}
    plan, solo, wall = schedule(minutes, threads, 2)
    assert sorted([k for lane in plan for k in lane] + solo) == sorted(minutes)
    assert solo == [k for k in sorted(minutes, key=lambda k: -minutes[k]) if threads[k] > 1]
    args = _parser().parse_args(["train-defaults"])
    bases, sharps = first_stage_runs(RECIPES)
    assert len(bases) <= args.jobs  # the first stages train side by side
    assert args.ae_minutes + args.decoder_minutes * len(sharps) + wall <= 170


def test_first_stages_are_the_recipes_and_train_as_one_thread_train_ae_runs(tmp_path):
    bases, sharps = first_stage_runs(["txt2img", "sr4"])
    assert bases == sorted({RECIPES[k]["first_stage"].removesuffix("-sharp") for k in ("txt2img", "sr4")})
    assert sharps == sorted({RECIPES[k]["first_stage"] for k in ("txt2img", "sr4")} - set(bases))
    assert set(bases) <= set(FIRST_STAGES) and all(s.removesuffix("-sharp") in FIRST_STAGES for s in sharps)
    args = _parser().parse_args(["train-defaults", "--runs", str(tmp_path)])
    for name, fs in FIRST_STAGES.items():
        cmd = _ae_cmd(args, name, tmp_path)
        assert cmd[1:4] == ["-m", "engine", "train-ae"]
        sub = _parser().parse_args(cmd[3:])
        assert (sub.z, sub.edge, sub.latent_blur, sub.threads) == (fs["z"], fs["edge"], fs["latent_blur"], 1)
        assert (Path(sub.run_dir), sub.minutes, sub.steps, sub.crop) == (tmp_path / name, args.ae_minutes, 0, 32)


def test_worker_command_is_a_one_kind_one_thread_train_defaults_run(tmp_path):
    args = _parser().parse_args(["train-defaults", "--quick", "--steps", "3", "--batch", "4", "--runs", str(tmp_path)])
    assert args.jobs == 2
    cmd = _worker_cmd(args, "sr4", tmp_path, tmp_path / "models")
    assert cmd[1:4] == ["-m", "engine", "train-defaults"]
    sub = _parser().parse_args(cmd[3:])
    assert (sub.only, sub.jobs, sub.threads, sub.quick, sub.steps, sub.batch) == ("sr4", 1, 1, True, 3, 4)
    assert Path(sub.summary) == tmp_path / "sr4" / "summary.json" and Path(sub.runs) == tmp_path
    assert _parser().parse_args(_worker_cmd(args, "sr4", tmp_path, tmp_path, threads=2)[3:]).threads == 2


def test_worker_batch_is_the_recipes_unless_batch_is_given(tmp_path):
    plain = _parser().parse_args(["train-defaults", "--runs", str(tmp_path)])
    assert plain.batch == 0
    for kind, recipe in RECIPES.items():
        sub = _parser().parse_args(_worker_cmd(plain, kind, tmp_path, tmp_path)[3:])
        assert sub.batch == recipe.get("batch", 32)
    assert {r.get("batch", 32) for r in RECIPES.values()} != {32}
    given = _parser().parse_args(["train-defaults", "--batch", "24", "--runs", str(tmp_path)])
    assert {_parser().parse_args(_worker_cmd(given, k, tmp_path, tmp_path)[3:]).batch for k in RECIPES} == {24}


def test_worker_optimizer_and_lr_are_the_recipes_unless_given(tmp_path, monkeypatch):
    import engine.train_defaults as td

    monkeypatch.setitem(td.RECIPES, "sr4", {**td.RECIPES["sr4"], "optimizer": "muon", "lr": 5e-4})
    plain = _parser().parse_args(["train-defaults", "--runs", str(tmp_path)])
    assert plain.optimizer is None and plain.lr is None
    subs = {k: _parser().parse_args(_worker_cmd(plain, k, tmp_path, tmp_path)[3:]) for k in RECIPES}
    assert {k: s.optimizer for k, s in subs.items()} == {k: RECIPES[k].get("optimizer", "adamw") for k in RECIPES}
    assert {k: s.lr for k, s in subs.items()} == {k: RECIPES[k].get("lr", 1e-3) for k in RECIPES}
    assert (subs["sr4"].optimizer, subs["sr4"].lr, subs["semantic"].lr) == ("muon", 5e-4, 1e-3)
    given = _parser().parse_args(["train-defaults", "--optimizer", "adamw", "--lr", "3e-4", "--runs", str(tmp_path)])
    again = [_parser().parse_args(_worker_cmd(given, k, tmp_path, tmp_path)[3:]) for k in RECIPES]
    assert {(s.optimizer, s.lr) for s in again} == {("adamw", 3e-4)}


def test_worker_seed_is_the_recipes_unless_given(tmp_path):
    plain = _parser().parse_args(["train-defaults", "--runs", str(tmp_path)])
    assert plain.seed is None and base_seed(plain) == 0
    seeds = {k: _parser().parse_args(_worker_cmd(plain, k, tmp_path, tmp_path)[3:]).seed for k in RECIPES}
    assert seeds == {k: RECIPES[k].get("seed", 0) for k in RECIPES} and set(seeds.values()) != {0}
    given = _parser().parse_args(["train-defaults", "--seed", "7", "--runs", str(tmp_path)])
    assert {_parser().parse_args(_worker_cmd(given, k, tmp_path, tmp_path)[3:]).seed for k in RECIPES} == {7}
    assert base_seed(given) == 7 and _ae_run(given, "ae")["seed"] == 7


@pytest.mark.slow
def test_train_defaults_quick_runs_kinds_in_parallel_and_gathers_the_summary(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "models"
    kinds = ["semantic", "sr4", "inpaint"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-m", "engine", "train-defaults", "--quick", "--steps", "2", "--jobs", "2",
                          "--only", ",".join(kinds), "--runs", str(runs), "--out", str(out), "--no-progress"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    summary = json.loads((runs / "summary.json").read_text())
    bases, sharps = first_stage_runs(kinds)
    assert {k for k in summary if k not in (*kinds, "wall_minutes")} == set(bases) | set(sharps)
    for name in bases:
        ae = json.loads((runs / name / "ae.json").read_text())
        assert ae["edge"] == FIRST_STAGES[name]["edge"] and ae["config"]["z_channels"] == FIRST_STAGES[name]["z"]
    for name in sharps:
        assert json.loads((runs / name / "ae.json").read_text())["finetuned_from"] == str(runs / name[:-6] / "ae.pt")
    for kind in kinds:
        assert summary[kind]["kind"] == kind and summary[kind]["steps"] == 2
        assert (runs / kind / "train.log").exists()
        assert summary[kind]["threads"] == min(2, RECIPES[kind].get("threads", 1))
    assert sorted(p.name for p in out.iterdir()) == ["world-inpaint.safetensors", "world-semantic.safetensors",
                                                     "world-sr4.safetensors"]
    assert '"plan"' in res.stdout


def test_bundled_files_are_what_their_recipes_build():
    """Each shipped file's UNet, batch, multi-scale share, first stage, optimizer, lr and seed are those its RECIPES
    entry asks for."""
    from engine.api import default_models_dir
    from engine.checkpoint import load
    from engine.train import DEFAULT_NAMES, ldm_config

    for kind, recipe in RECIPES.items():
        path = Path(default_models_dir()) / f"{DEFAULT_NAMES[kind]}.safetensors"
        if not path.exists():
            pytest.skip(f"{path.name} not trained yet")
        model = load(path)
        facts = json.loads(model.metadata["latent_canvas.training"])
        cfg = {k: v for k, v in recipe["cfg"].items() if k in inspect.signature(ldm_config).parameters}
        built = ldm_config(kind, model.config.first_stage, **cfg)
        want = built.unet
        got = model.config.unet
        assert (got.model_channels, tuple(got.channel_mult), got.in_channels) == \
            (want.model_channels, tuple(want.channel_mult), want.in_channels), kind
        assert (got.num_classes, model.config.pooled_context) == \
            (want.num_classes, built.pooled_context), kind
        assert model.config.first_stage.embed_dim == FIRST_STAGES[recipe["first_stage"].removesuffix("-sharp")]["z"]
        assert facts["batch"] == recipe.get("batch", 32), kind
        assert facts.get("multiscale", {}).get("share", 0.0) == recipe["cfg"].get("multiscale", 0.0), kind
        assert (facts.get("optimizer", "adamw"), facts["lr"]) == (recipe_optimizer(kind), recipe_lr(kind)), kind
        assert facts.get("seed", 0) == recipe_seed(kind), kind


def test_train_defaults_trains_the_layout_planner_first_and_skips_it_once_made(tmp_path):
    from engine import planner

    runs, out = tmp_path / "runs", tmp_path / "models"
    cmd = [sys.executable, "-m", "engine", "train-defaults", "--quick", "--steps", "3", "--only", "planner", "--runs",
           str(runs), "--out", str(out), "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    target = out / "planner" / "world-planner.safetensors"
    assert planner.load(target).cfg == planner.PlannerConfig()
    assert json.loads((runs / "summary.json").read_text())["planner"]["steps"] == 3
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "exists, skipped" in again.stdout
