"""Export a checkpoint to where other tools run policies: an SB3 zip, optionally in rl-zoo3's layout, or
the policy alone as an ONNX or TorchScript file.

The network mappings live in :mod:`offtune.policies.sb3` and :mod:`offtune.policies.portable`; this module
adds what needs the live env: its own (unflattened) observation and action spaces, which SB3 must be built
with, and for ``rl_zoo`` an evaluation of the checkpoint, stored the way rl-zoo3's ``EvalCallback`` and the
Hugging Face packaging store theirs.

rl-zoo3 finds a model as ``DIR/<algo>/<env>_<exp id>/<env>.zip`` with its settings in
``<env>_<exp id>/<env>/config.yml`` (``env_kwargs`` there are passed to ``gym.make``) and ``args.yml``;
so ``python -m rl_zoo3.enjoy --algo td3 --env <env> -f DIR --exp-id N --gym-packages gymnasium_robotics`` plays it.
"""

from __future__ import annotations

import datetime as _dt
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from gymnasium import spaces
from gymnasium.envs.registration import EnvSpec

from offtune.buffers.mazes import MAZE_FAMILIES
from offtune.errors import OfftuneError, suggest
from offtune.finetune.envs import make_env
from offtune.finetune.evaluate import evaluate
from offtune.policies.checkpoint import LoadedAgent, load_agent
from offtune.policies.portable import PORTABLE_FORMATS, PortableExport, export_portable
from offtune.policies.sb3 import SB3Export, export_sb3

FORMATS = ("sb3", *PORTABLE_FORMATS)


@dataclass
class RlZooRun:
    """One experiment folder in rl-zoo3's layout."""

    folder: Path
    run_dir: Path
    model: Path
    sb3_algo: str
    env_id: str
    exp_id: int
    evaluation: dict[str, Any]

    def enjoy_command(self) -> str:
        return (f"python -m rl_zoo3.enjoy --algo {self.sb3_algo} --env {self.env_id} -f {self.folder} "
                f"--exp-id {self.exp_id} --gym-packages gymnasium_robotics")


@dataclass
class ExportResult:
    """What one export wrote: an SB3 zip (and maybe an rl-zoo3 folder), or an ONNX/TorchScript file."""

    sb3: SB3Export | None = None
    rl_zoo: RlZooRun | None = None
    portable: PortableExport | None = None


def env_spaces(info: Any) -> tuple[spaces.Space, spaces.Space]:
    """The live env's own observation space (dict observations unflattened) and its action space."""
    env = make_env(info)
    try:
        return env.raw_observation_space, env.action_space
    finally:
        env.close()


def env_name(env_id: str) -> str:
    """rl-zoo3's file-system name of an env id (huggingface_sb3 replaces '/' with '-')."""
    return env_id.replace("/", "-")


def _next_exp_id(algo_dir: Path, name: str) -> int:
    """One more than the largest ``<name>_<N>`` already there, as rl-zoo3 numbers experiments."""
    taken = [int(p.name[len(name) + 1:]) for p in algo_dir.glob(f"{name}_*") if p.name[len(name) + 1:].isdigit()]
    return max(taken, default=0) + 1


def env_kwargs(info: Any) -> dict[str, Any]:
    """What ``gym.make(env_id, **kwargs)`` needs to rebuild the live env: the spec's kwargs and time limit."""
    spec = EnvSpec.from_json(info.eval_env_spec)
    kwargs = dict(spec.kwargs)
    if spec.max_episode_steps is not None:
        kwargs["max_episode_steps"] = spec.max_episode_steps
    return kwargs


def write_rl_zoo(folder: str | Path, loaded: LoadedAgent, export: SB3Export, episodes: int, seed: int) -> RlZooRun:
    """Copy ``export``'s zip into a new rl-zoo3 experiment folder under ``folder`` with its settings and an
    evaluation of the checkpoint (``evaluations.npz`` as ``EvalCallback`` writes it, ``results.json`` as
    Hugging Face packaging does)."""
    info = loaded.info
    env_id = EnvSpec.from_json(info.eval_env_spec).id
    name = env_name(env_id)
    folder = Path(folder)
    algo_dir = folder / export.sb3_algo
    exp_id = _next_exp_id(algo_dir, name)
    run_dir = algo_dir / f"{name}_{exp_id}"
    params_dir = run_dir / name
    params_dir.mkdir(parents=True)
    model = run_dir / f"{name}.zip"
    shutil.copyfile(export.path, model)

    kwargs = env_kwargs(info)
    hyperparams = {
        "policy": export.policy,
        "policy_kwargs": export.policy_kwargs,
        **export.hyperparameters,
        "n_timesteps": loaded.step,
        "normalize": False,
        "env_kwargs": kwargs,
    }
    (params_dir / "config.yml").write_text(yaml.safe_dump(hyperparams, sort_keys=False))
    args = {"algo": export.sb3_algo, "env": env_id, "env_kwargs": kwargs, "exp_id": exp_id, "folder": str(folder),
            "seed": seed, "gym_packages": ["gymnasium_robotics"], "trained_agent": str(Path(loaded.path).resolve())}
    (params_dir / "args.yml").write_text(yaml.safe_dump(args, sort_keys=False))
    (params_dir / "env_kwargs.yml").write_text(yaml.safe_dump(kwargs, sort_keys=False))

    result = evaluate(loaded.agent, info, loaded.normalizer, episodes, seed, loaded.device)
    arrays: dict[str, np.ndarray] = {
        "timesteps": np.array([loaded.step]),
        "results": np.array([result.returns]),
        "ep_lengths": np.array([result.lengths]),
    }
    if info.family in ("antmaze", "pointmaze"):
        arrays["successes"] = np.array([result.successes])
    np.savez(run_dir / "evaluations.npz", **arrays)
    evaluation = {
        "mean_reward": float(np.mean(result.returns)),
        "std_reward": float(np.std(result.returns)),
        "is_deterministic": True,
        "n_eval_episodes": result.episodes,
        "eval_datetime": _dt.datetime.now().isoformat(),
        "seed": seed,
        "score": result.score,
        "score_std": result.std,
        "score_rule": info.score_rule.describe(),
        "dataset": info.name,
        "checkpoint": str(Path(loaded.path).resolve()),
        "evaluated_by": "offtune on its live env (the same deterministic actions as the zip)",
    }
    (run_dir / "results.json").write_text(json.dumps(evaluation, indent=2) + "\n")
    return RlZooRun(folder, run_dir, model, export.sb3_algo, env_id, exp_id, evaluation)


def export(
    checkpoint: str | Path,
    out: str | Path | None = None,
    *,
    format: str = "sb3",
    sb3_algo: str | None = None,
    rl_zoo: str | Path | None = None,
    eval_episodes: int | None = None,
    seed: int = 0,
) -> ExportResult:
    """Export ``checkpoint`` as an SB3 zip at ``out`` and/or as an rl-zoo3 experiment under ``rl_zoo``, or
    (``format`` "onnx" or "torchscript") as a policy file at ``out``.

    ``eval_episodes`` (default: 100 on AntMaze, 10 elsewhere) and ``seed`` set the evaluation stored
    with an rl-zoo3 experiment.
    """
    from offtune.finetune.trainer import default_eval_episodes

    if format not in FORMATS:
        raise OfftuneError(f"unknown export format '{format}'; choose {', '.join(FORMATS)}.{suggest(format, FORMATS)}")
    if format in PORTABLE_FORMATS:
        if rl_zoo is not None or sb3_algo is not None:
            raise OfftuneError(f"--rl-zoo and --sb3-algo belong to --format sb3, not {format}")
        if out is None:
            raise OfftuneError(f"say where to write the {format} file (-o)")
        return ExportResult(portable=export_portable(load_agent(checkpoint, "cpu"), out, format))
    if out is None and rl_zoo is None:
        raise OfftuneError("say where to write the export: an output zip (-o) and/or an rl-zoo folder (--rl-zoo)")
    loaded = load_agent(checkpoint, "cpu")
    observation_space, action_space = env_spaces(loaded.info)
    if rl_zoo is None:
        return ExportResult(export_sb3(loaded, out, observation_space, action_space, sb3_algo))
    staging = Path(rl_zoo) / f".offtune-export-{loaded.algo}.zip"
    try:
        exported = export_sb3(loaded, staging, observation_space, action_space, sb3_algo)
        zoo = write_rl_zoo(rl_zoo, loaded, exported, eval_episodes or default_eval_episodes(loaded.info), seed)
        if out is not None:
            target = Path(out) if Path(out).suffix == ".zip" else Path(f"{out}.zip")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(zoo.model, target)
            exported.path = target
        else:
            exported.path = zoo.model
    finally:
        staging.unlink(missing_ok=True)
    if loaded.info.family in MAZE_FAMILIES:
        exported.notes.append("rl-zoo3 builds the plain env from its id and kwargs: its rewards and episode ends "
                              "are the env's own, while offtune's maze task pays 1 and ends on reaching the goal "
                              "(observations, and so actions, are the same)")
    return ExportResult(exported, zoo)
