"""The SPOT / IQL AntMaze protocol: datasets x algorithms x seeds, pretrain then fine-tune, the papers' table.

Datasets are the ones offtune collects like D4RL/antmaze (``offtune dataset collect antmaze-...``: maze
waypoints walked by offtune's goal-reaching ant, action noise 0.2); missing ones are collected first. Runs go
through ``offtune sweep`` (Ray when installed, else one after another; a rerun skips finished runs and resumes
interrupted ones), the table is ``offtune report``'s, and the published numbers are printed beside it for
reference only: the papers used D4RL's data, ant and simulator, so the numbers do not compare one to one.

    python benchmarks/paper.py --budget smoke     # minutes: the whole pipeline, tiny numbers
    python benchmarks/paper.py --budget cpu       # under an hour of a CPU: umaze, 2 algorithms, 3 seeds
    python benchmarks/paper.py --budget paper     # the papers' 1M + 1M on all six datasets (GPU or Ray cluster)

Any budget value can be changed (``--seeds 0,1``, ``--datasets umaze,medium-play``, ``--pretrain-steps``, ...);
``--generator d4rl`` collects the way D4RL's own generator made the papers' data (hand-picked goal cells, an
ant that circles its goal) instead of Minari's port; ``--published`` uses the published D4RL/antmaze data
(local or ``--download``) instead of collecting.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from offtune.buffers import antmaze_collect
from offtune.buffers.storage import local_ids

ALL_DATASETS = ("umaze", "umaze-diverse", "medium-play", "medium-diverse", "large-play", "large-diverse")


@dataclass(frozen=True)
class Budget:
    """Everything one protocol run sets: data, runs, and per-algorithm settings (SPOT's VAE steps)."""

    datasets: tuple[str, ...]
    dataset_steps: int
    seeds: tuple[int, ...]
    pretrain_steps: int
    finetune_steps: int
    eval_every: int
    eval_episodes: int
    algo_settings: dict[str, dict[str, object]] = field(default_factory=dict)


BUDGETS = {
    # the pipeline end to end in minutes; the scores mean nothing
    "smoke": Budget(("umaze",), 3_000, (0,), 200, 200, 100, 2, {"spot": {"vae_steps": 100}}),
    # under an hour of a CPU (measured 2026-12-02: 41.5 minutes one run after another on one core, the 200k-step
    # collection included): enough to see the protocol, not the papers' scores
    "cpu": Budget(("umaze",), 200_000, (0, 1, 2), 10_000, 10_000, 5_000, 20, {"spot": {"vae_steps": 5_000}}),
    # SPOT / IQL papers: 1M offline updates, 1M online steps, 100 evaluation episodes; 1M-step datasets
    "paper": Budget(ALL_DATASETS, 1_000_000, (0, 1, 2, 3, 4), 1_000_000, 1_000_000, 50_000, 100),
}

# Published before -> after (success rate x 100), AntMaze-v2 in the SPOT paper (IQL re-run by its authors) and
# AntMaze-v0 in the IQL paper; /work/shared/reference/algorithms.md sections 1.6 and 2.7.
PUBLISHED = {
    "umaze": {"SPOT": (93.2, 99.2), "IQL (SPOT paper)": (85.4, 96.2), "IQL (IQL paper, v0)": (86.7, 96.0)},
    "umaze-diverse": {"SPOT": (41.6, 96.0), "IQL (SPOT paper)": (70.8, 62.2), "IQL (IQL paper, v0)": (75.0, 84.0)},
    "medium-play": {"SPOT": (75.2, 97.4), "IQL (SPOT paper)": (68.6, 89.8), "IQL (IQL paper, v0)": (72.0, 95.0)},
    "medium-diverse": {"SPOT": (73.0, 96.2), "IQL (SPOT paper)": (73.4, 90.2), "IQL (IQL paper, v0)": (68.3, 92.0)},
    "large-play": {"SPOT": (40.8, 89.4), "IQL (SPOT paper)": (40.0, 78.6), "IQL (IQL paper, v0)": (25.5, 46.0)},
    "large-diverse": {"SPOT": (44.0, 90.8), "IQL (SPOT paper)": (40.4, 73.4), "IQL (IQL paper, v0)": (42.6, 60.7)},
}


def _offtune(*args: str) -> None:
    """Run an offtune command in a child process (its own progress bars, Ray, Ctrl-C handling)."""
    command = [sys.executable, "-c", "from offtune.cli.main import main; main()", *args]
    completed = subprocess.run(command, check=False)
    if completed.returncode != 0:
        sys.exit(f"`offtune {' '.join(args)}` failed (exit code {completed.returncode})")


def _recipe(name: str, generator: str) -> antmaze_collect.AntMazeRecipe:
    return antmaze_collect.recipe_for(f"antmaze-{name}", generator=generator)


def dataset_names(budget: Budget, published: bool, generator: str = "minari") -> list[str]:
    """The names the sweep trains on: offtune's collected datasets, or the published D4RL ones."""
    if published:
        return [f"antmaze-{name}-v2" for name in budget.datasets]
    return [_recipe(name, generator).minari_id for name in budget.datasets]


def ensure_datasets(budget: Budget, seed: int, generator: str = "minari") -> None:
    """Collect every dataset the budget needs that is not local yet."""
    for name in budget.datasets:
        recipe = _recipe(name, generator)
        if recipe.minari_id not in local_ids():
            print(f"collecting {recipe.minari_id}: {budget.dataset_steps:,} steps like {recipe.made_like}")
            _offtune("dataset", "collect", f"antmaze-{name}", "--generator", generator,
                     "--steps", str(budget.dataset_steps), "--seed", str(seed))


def write_plan(budget: Budget, algos: list[str], datasets: list[str], out: Path) -> Path:
    """The sweep file for ``offtune sweep --config``."""
    plan: dict[str, object] = {
        "algos": algos,
        "datasets": datasets,
        "seeds": list(budget.seeds),
        "pretrain_steps": budget.pretrain_steps,
        "finetune_steps": budget.finetune_steps,
        "eval_every": budget.eval_every,
        "eval_episodes": budget.eval_episodes,
        "out": str(out),
    }
    for algo in algos:
        if budget.algo_settings.get(algo):
            plan[algo] = {"set": budget.algo_settings[algo]}
    out.mkdir(parents=True, exist_ok=True)
    path = out / "sweep.yaml"
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    return path


def published_table(budget: Budget) -> str:
    """The papers' before -> after for the budget's datasets, as markdown."""
    columns = list(PUBLISHED["umaze"])
    lines = ["| published (D4RL data) | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    totals = dict.fromkeys(columns, (0.0, 0.0))
    for name in budget.datasets:
        cells = PUBLISHED[name]
        lines.append(f"| antmaze-{name} | " + " | ".join(f"{b:.1f} → {a:.1f}" for b, a in cells.values()) + " |")
        totals = {c: (totals[c][0] + cells[c][0], totals[c][1] + cells[c][1]) for c in columns}
    if len(budget.datasets) > 1:
        lines.append("| total | " + " | ".join(f"{b:.1f} → {a:.1f}" for b, a in totals.values()) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", choices=list(BUDGETS), default="cpu")
    parser.add_argument("--algos", default="iql,spot")
    parser.add_argument("--datasets", default=None, help=f"Comma-separated, from {', '.join(ALL_DATASETS)}.")
    parser.add_argument("--seeds", default=None, help="Comma-separated seeds.")
    parser.add_argument("--dataset-steps", type=int, default=None)
    parser.add_argument("--pretrain-steps", type=int, default=None)
    parser.add_argument("--finetune-steps", type=int, default=None)
    parser.add_argument("--collect-seed", type=int, default=0, help="Seed of the dataset collection.")
    parser.add_argument("--generator", choices=antmaze_collect.GENERATORS, default="minari",
                        help="Collect like Minari's port (default) or like D4RL's own generator.")
    parser.add_argument("--published", action="store_true", help="Train on the published D4RL/antmaze data.")
    parser.add_argument("--download", action="store_true", help="With --published: download missing datasets.")
    parser.add_argument("--sequential", action="store_true", help="No Ray: one run after another here.")
    parser.add_argument("--out", default=None, help="Default: runs/paper-<budget>.")
    args = parser.parse_args()

    budget = BUDGETS[args.budget]
    changes: dict[str, object] = {}
    if args.datasets:
        names = tuple(name.strip() for name in args.datasets.split(","))
        unknown = set(names) - set(ALL_DATASETS)
        if unknown:
            parser.error(f"unknown datasets {', '.join(sorted(unknown))}; choose from {', '.join(ALL_DATASETS)}")
        changes["datasets"] = names
    if args.seeds:
        changes["seeds"] = tuple(int(seed) for seed in args.seeds.split(","))
    for key in ("dataset_steps", "pretrain_steps", "finetune_steps"):
        if getattr(args, key) is not None:
            changes[key] = getattr(args, key)
    budget = replace(budget, **changes)
    algos = [algo.strip().lower() for algo in args.algos.split(",")]
    out = Path(args.out or f"runs/paper-{args.budget}")

    if not args.published:
        ensure_datasets(budget, args.collect_seed, args.generator)
    plan = write_plan(budget, algos, dataset_names(budget, args.published, args.generator), out)
    print(f"sweep plan: {plan}")
    _offtune("sweep", "--config", str(plan), *(["--sequential"] if args.sequential else []),
             *(["--download"] if args.download else []))
    print()
    _offtune("report", str(out), "--format", "markdown")
    print()
    print(published_table(budget))


if __name__ == "__main__":
    main()
