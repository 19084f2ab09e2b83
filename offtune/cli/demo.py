"""``offtune demo``: the whole offline -> online pipeline on a dataset it makes itself, in minutes on a CPU."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import click

from offtune.buffers import collect
from offtune.buffers.storage import local_ids
from offtune.cli.display import RichProgress, before_after_table, console, err_console
from offtune.finetune import trainer
from offtune.finetune.runtime import SEED_RANGE

DEMO_DATASET = "offtune/pointmaze/umaze-demo-v0"
DEMO_NOISE = 1.0
"""A noisy behaviour policy and a short pretraining leave the offline policy short of 100% success, so
the online phase has something to fix within the demo's few minutes."""


@click.command()
@click.option("--algo", default="iql", show_default=True, help="iql, spot or misa.")
@click.option("--dataset-steps", default=10_000, show_default=True, type=click.IntRange(min=1),
              help="Steps to collect when the demo dataset is not local yet.")
@click.option("--pretrain-steps", default=1_000, show_default=True, type=click.IntRange(min=1))
@click.option("--finetune-steps", default=6_000, show_default=True, type=click.IntRange(min=1))
@click.option("--eval-episodes", default=20, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True, type=click.IntRange(*SEED_RANGE))
@click.option("--device", default="auto", show_default=True)
@click.option("--out", default="runs/demo", show_default=True, type=click.Path(file_okay=False),
              help="The demo's own folder; its previous demo runs are replaced.")
def demo(algo, dataset_steps, pretrain_steps, finetune_steps, eval_episodes, seed, device, out) -> None:
    """Collect a PointMaze dataset (if needed), pretrain offline, fine-tune online, print before -> after."""
    # Every option is checked before minutes of collecting and pretraining, not when its step comes.
    trainer.algorithm(algo)
    trainer.resolve_device(device)
    algo = algo.lower()
    out = Path(out)
    for stale in (out / f"{algo}-offline", out / f"{algo}-online"):
        shutil.rmtree(stale, ignore_errors=True)
    if DEMO_DATASET not in local_ids():
        console.print(f"[bold]1/3[/] collecting {DEMO_DATASET}: {dataset_steps:,} steps of a planner with "
                      f"action noise {DEMO_NOISE}")
        with RichProgress() as progress:
            progress.stage("collect", dataset_steps)
            collect.collect_pointmaze("umaze", dataset_steps, seed=seed, noise=DEMO_NOISE, dataset_id=DEMO_DATASET,
                                      progress=lambda count: progress.advance(count, {}))
    else:
        console.print(f"[bold]1/3[/] using the local dataset {DEMO_DATASET}")
    console.print(f"[bold]2/3[/] pretraining {algo.upper()} offline for {pretrain_steps:,} updates")
    overrides = {"vae_steps": 2_000} if algo == "spot" else {}
    try:
        with RichProgress() as progress:
            offline = trainer.pretrain(algo, DEMO_DATASET, steps=pretrain_steps, seed=seed, device=device,
                                       eval_episodes=eval_episodes, eval_every=max(pretrain_steps // 4, 1),
                                       out=out / f"{algo}-offline",
                                       overrides=overrides, progress=progress)
        console.print(f"[bold]3/3[/] fine-tuning online for {finetune_steps:,} env steps")
        with RichProgress() as progress:
            online = trainer.finetune(offline.checkpoint, steps=finetune_steps, seed=seed, device=device,
                                      eval_episodes=eval_episodes, eval_every=max(finetune_steps // 4, 1),
                                      out=out / f"{algo}-online", progress=progress)
    except trainer.Interrupted as error:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # more presses must not interrupt the exit itself
        err_console.print(str(error), style="yellow", markup=False, highlight=False, soft_wrap=True)
        raise SystemExit(130) from None
    console.print(before_after_table("offtune demo: offline → online", DEMO_DATASET, algo, online.scores))
    console.print(f"runs in {out}; next: offtune report {out} · offtune export {online.checkpoint} -o policy.zip")
