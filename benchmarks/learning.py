"""Learning benchmark: does each algorithm learn, offline and then online, on data made here?

``--suite pointmaze`` (default): for every maze and algorithm, collect the PointMaze dataset if it is not
local (the planner + PD controller of the published datasets, with a configurable noise), pretrain,
evaluate, fine-tune online, evaluate again; then print the papers' table (before -> after, mean ± std over
seeds, success rate x 100).

``--suite locomotion``: a Hopper-v5 dataset written by an SB3 policy (``--policy``, e.g. the SAC policy in
``shared/data/hopper-sac.zip``) with Gaussian action noise, each algorithm pretrained on it with the
hopper-medium settings of the official code, and a table of the behaviour policy's normalised score (the
dataset's mean episode) beside each algorithm's final offline score over seeds.

    # fine-tuning evidence: a noisy behaviour policy and a short pretraining leave room to improve online
    python benchmarks/learning.py --algos iql,spot,misa
    # offline learning on the published recipe's noise, both mazes, no online phase
    python benchmarks/learning.py --mazes umaze,medium --noise 0.5 --dataset-steps 30000 \
        --pretrain-steps 3000 --finetune-steps 0

    # locomotion: 20k VAE (SPOT) and 20k updates on 100k hopper steps, offline only
    python benchmarks/learning.py --suite locomotion --policy ../shared/data/hopper-sac.zip --seeds 0,1,2

The defaults fit a 2-core CPU in minutes per run; raise --pretrain-steps / --finetune-steps on a GPU.
Datasets go to MINARI_DATASETS_PATH (default ~/.minari/datasets); runs to --out.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from rich.console import Console

from offtune.buffers import collect, datasets
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


def ensure_locomotion_dataset(env_id: str, policy: str, steps: int, noise: float, seed: int) -> str:
    dataset_id = f"offtune/{env_id.split('-')[0].lower()}/{Path(policy).stem.lower().replace('_', '-')}" \
                 f"-noise{round(noise * 100)}-{steps // 1000}k-v0"
    if dataset_id not in local_ids():
        console.print(f"collecting {dataset_id} ({steps:,} steps of {policy}, noise {noise})")
        collect.collect_policy(env_id, steps, seed=seed, policy_path=policy, noise=noise, dataset_id=dataset_id)
    return dataset_id


def locomotion_suite(args: argparse.Namespace) -> None:
    """Offline scores on a policy-made locomotion dataset beside the behaviour policy's own score."""
    if args.policy is None:
        raise SystemExit("--suite locomotion needs --policy (an SB3 zip for --env)")
    dataset = ensure_locomotion_dataset(args.env, args.policy, args.dataset_steps, args.noise, seed=0)
    data = datasets.load(dataset)
    behaviour = float(np.mean(data.info.score_rule.score(data.episode_returns())))
    out = Path(args.out)
    rows = []
    for algo in args.algos.split(","):
        # As many VAE steps as updates (the 20k + 20k), MISA with its CPU sample counts.
        overrides = {**({} if args.official else CPU_OVERRIDES.get(algo, {})),
                     **({"vae_steps": args.pretrain_steps} if algo == "spot" else {}), **parse_assignments(args.sets)}
        scores = []
        for seed in map(int, args.seeds.split(",")):
            started = time.perf_counter()
            run = trainer.pretrain(algo, dataset, steps=args.pretrain_steps, seed=seed, device=args.device,
                                   eval_every=args.eval_every or max(args.pretrain_steps // 4, 1),
                                   eval_episodes=args.eval_episodes, out=out / "locomotion" / f"{algo}-s{seed}",
                                   overrides=overrides)
            scores.append(run.evaluations[-1]["score"])
            console.print(f"{algo} seed {seed}: {scores[-1]:.1f} ({time.perf_counter() - started:.0f} s; "
                          f"overrides {overrides or 'none'})")
        rows.append(f"| {algo} | {np.mean(scores):.1f} ± {np.std(scores):.1f} | "
                    f"{', '.join(f'{score:.1f}' for score in scores)} | {np.mean(scores) / behaviour:.2f} |")
    print(f"\n{dataset}: behaviour policy {behaviour:.1f} ({data.info.score_rule.describe()}), "
          f"{args.pretrain_steps:,} updates{' after as many VAE steps (SPOT)' if 'spot' in args.algos else ''}\n")
    print("| algorithm | offline score | per seed | ÷ behaviour |\n|---|---|---|---|")
    print("\n".join(rows))


def pointmaze_suite(args: argparse.Namespace) -> None:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=("pointmaze", "locomotion"), default="pointmaze")
    parser.add_argument("--algos", default="iql,spot,misa")
    parser.add_argument("--mazes", default="umaze")
    parser.add_argument("--env", default="Hopper-v5", help="Locomotion suite: the env --policy acts in.")
    parser.add_argument("--policy", default=None, help="Locomotion suite: an SB3 policy zip that writes the data.")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--dataset-steps", type=int, default=None,
                        help="Default: 10k (pointmaze), 100k (locomotion).")
    parser.add_argument("--noise", type=float, default=None,
                        help="Gaussian action noise of the collector (default: 1.0 pointmaze, 0.3 locomotion).")
    parser.add_argument("--pretrain-steps", type=int, default=None, help="Default: 1k (pointmaze), 20k (locomotion).")
    parser.add_argument("--finetune-steps", type=int, default=6_000, help="0: offline only (pointmaze suite).")
    parser.add_argument("--eval-episodes", type=int, default=None, help="Default: 20 (pointmaze), 10 (locomotion).")
    parser.add_argument("--eval-every", type=int, default=None, help="Default: 4 evaluations per phase.")
    parser.add_argument("--official", action="store_true", help="Use each algorithm's official settings.")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="Override a setting of every algorithm run (pretraining; the fine-tuning inherits it); "
                             "the key must exist in each algorithm of --algos.")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default="runs/learning")
    args = parser.parse_args()
    locomotion = args.suite == "locomotion"
    args.dataset_steps = args.dataset_steps or (100_000 if locomotion else 10_000)
    args.noise = (0.3 if locomotion else 1.0) if args.noise is None else args.noise
    args.pretrain_steps = args.pretrain_steps or (20_000 if locomotion else 1_000)
    args.eval_episodes = args.eval_episodes or (10 if locomotion else 20)
    (locomotion_suite if locomotion else pointmaze_suite)(args)


if __name__ == "__main__":
    main()
