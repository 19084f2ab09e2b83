"""Learning benchmark: does each algorithm learn, offline and then online, on PointMaze data made here?

For every maze and algorithm: collect the PointMaze dataset if it is not local (the planner + PD
controller of the published datasets, with a configurable noise), pretrain, evaluate, fine-tune online,
evaluate again; then print the papers' table (before -> after, mean ± std over seeds, success rate x 100).

    # fine-tuning evidence: a noisy behaviour policy and a short pretraining leave room to improve online
    python benchmarks/learning.py --algos iql,spot,misa
    # offline learning on the published recipe's noise, both mazes, no online phase
    python benchmarks/learning.py --mazes umaze,medium --noise 0.5 --dataset-steps 30000 \
        --pretrain-steps 3000 --finetune-steps 0

The defaults fit a 2-core CPU in minutes per run; raise --pretrain-steps / --finetune-steps on a GPU.
Datasets go to MINARI_DATASETS_PATH (default ~/.minari/datasets); runs to --out.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.console import Console

from offtune.buffers import collect
from offtune.buffers.storage import local_ids
from offtune.finetune import report, trainer
from offtune.policies.config import parse_assignments

console = Console()

# Per-algorithm settings for a CPU budget. MISA's official K=50 log-sum-exp samples and 50-sample HMC
# chains cost ~40 IQL updates each on a CPU; the benchmark uses fewer samples and says so in its output.
CPU_OVERRIDES: dict[str, dict[str, object]] = {
    "iql": {},
    "spot": {"vae_steps": 2_000},
    "misa": {"n_actions": 10, "hmc_num_samples": 5, "hmc_burnin_steps": 2},
}


def ensure_dataset(maze: str, steps: int, noise: float, seed: int) -> str:
    dataset_id = f"offtune/pointmaze/{maze}-noise{round(noise * 100)}-{steps // 1000}k-v0"
    if dataset_id not in local_ids():
        console.print(f"collecting {dataset_id} ({steps:,} steps, noise {noise})")
        collect.collect_pointmaze(maze, steps, seed=seed, noise=noise, dataset_id=dataset_id)
    return dataset_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algos", default="iql,spot,misa")
    parser.add_argument("--mazes", default="umaze")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--dataset-steps", type=int, default=10_000)
    parser.add_argument("--noise", type=float, default=1.0, help="Gaussian action noise of the collector.")
    parser.add_argument("--pretrain-steps", type=int, default=1_000)
    parser.add_argument("--finetune-steps", type=int, default=6_000, help="0: offline only.")
    parser.add_argument("--eval-episodes", type=int, default=20)
    parser.add_argument("--eval-every", type=int, default=None, help="Default: 4 evaluations per phase.")
    parser.add_argument("--official", action="store_true", help="Use each algorithm's official settings.")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="Override a setting of every algorithm run (pretraining; the fine-tuning inherits it); "
                             "the key must exist in each algorithm of --algos.")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="runs/learning")
    args = parser.parse_args()

    out = Path(args.out)
    for maze in args.mazes.split(","):
        dataset = ensure_dataset(maze, args.dataset_steps, args.noise, seed=0)
        for algo in args.algos.split(","):
            overrides = {**({} if args.official else CPU_OVERRIDES.get(algo, {})), **parse_assignments(args.sets)}
            for seed in map(int, args.seeds.split(",")):
                name = f"{algo}-{maze}-s{seed}"
                started = time.perf_counter()
                offline = trainer.pretrain(
                    algo, dataset, steps=args.pretrain_steps, seed=seed, device=args.device,
                    eval_every=args.eval_every or max(args.pretrain_steps // 4, 1),
                    eval_episodes=args.eval_episodes, out=out / "offline" / name, overrides=overrides,
                )
                if args.finetune_steps == 0:
                    console.print(f"{name}: offline {offline.evaluations[-1]['score']:.1f} "
                                  f"({time.perf_counter() - started:.0f} s; overrides {overrides or 'none'})")
                    continue
                online = trainer.finetune(
                    offline.checkpoint, steps=args.finetune_steps, seed=seed, device=args.device,
                    eval_every=args.eval_every or max(args.finetune_steps // 4, 1),
                    eval_episodes=args.eval_episodes, out=out / "online" / name,
                )
                console.print(
                    f"{name}: offline {offline.evaluations[-1]['score']:.1f} -> "
                    f"before {online.scores['before']['score']:.1f} -> after {online.scores['after']['score']:.1f}"
                    f" ({time.perf_counter() - started:.0f} s; overrides {overrides or 'none'})"
                )
    # Plain print: a rich console would wrap the markdown rows at the terminal width (80 columns when piped).
    print(report.render(report.aggregate([out / ("online" if args.finetune_steps else "offline")]), "markdown"), end="")


if __name__ == "__main__":
    main()
