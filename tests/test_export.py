"""SB3 export: real checkpoints of IQL, SPOT and MISA (a few updates on the small PointMaze dataset), real
SB3 zips, loaded by SB3 in a Python process that cannot import offtune, and compared with
``offtune.load_policy`` on observations of the live env."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from gymnasium.envs.registration import EnvSpec
from stable_baselines3 import SAC, TD3
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv

import offtune
from offtune.buffers.datasets import DatasetInfo
from offtune.buffers.gym_make import make_gym_env
from offtune.buffers.transforms import Normalizer, RewardTransform
from offtune.cli.main import _register, cli
from offtune.errors import OfftuneError
from offtune.finetune import trainer
from offtune.finetune.envs import DatasetTask
from offtune.finetune.evaluate import evaluate
from offtune.finetune.export import env_spaces
from offtune.policies.checkpoint import LoadedAgent, load_agent
from offtune.policies.iql import IQLAgent, IQLConfig
from offtune.policies.misa import MISAAgent, MISAConfig
from offtune.policies.policy import Policy
from offtune.policies.sb3 import build_sb3_model, export_sb3, parity_error
from offtune.policies.sb3_layout import feature_columns
from offtune.policies.spot import SPOTAgent, SPOTConfig

SMALL = {"hidden_dims": "32,32", "batch_size": 32}
OVERRIDES = {
    "iql": SMALL,
    "spot": {**SMALL, "vae_steps": 20, "vae_hidden_dim": 32},
    # PointMaze's MISA preset puts LayerNorm in the actor, which SB3 cannot hold (tested below).
    "misa": {**SMALL, "layer_norm": False, "n_actions": 4, "unbiased_grad": False},
}
EXPORTS = [("iql", "sac"), ("iql", "td3"), ("spot", "td3"), ("misa", "sac")]
SB3_CLASSES = {"td3": TD3, "sac": SAC}
REPO = Path(__file__).resolve().parents[1]
ROLLOUT = 15


@pytest.fixture(scope="module")
def checkpoints(pointmaze_dataset: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    runs = tmp_path_factory.mktemp("runs")
    return {
        algo: trainer.pretrain(algo, pointmaze_dataset, steps=20, out=runs / algo, overrides=overrides,
                               eval_episodes=1, device="cpu").checkpoint
        for algo, overrides in OVERRIDES.items()
    }


@pytest.fixture(scope="module")
def zips(checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    """IQL as SAC through the CLI, the others through the Python API."""
    folder = tmp_path_factory.mktemp("zips")
    _register()
    result = CliRunner().invoke(cli, ["export", str(checkpoints["iql"]), "--format", "sb3", "-o",
                                      str(folder / "iql-sac.zip")])
    assert result.exit_code == 0, result.output
    assert "critics" in result.output and "exported" in result.output
    paths = {("iql", "sac"): folder / "iql-sac.zip"}
    for algo, sb3_algo in EXPORTS[1:]:
        paths[algo, sb3_algo] = offtune.export(checkpoints[algo], folder / f"{algo}-{sb3_algo}",
                                               sb3_algo=sb3_algo).sb3.path
    assert all(path.exists() and path.suffix == ".zip" for path in paths.values())
    return paths


class _Recorder(gym.Wrapper):
    """Keeps the env's raw (dict) observation, under offtune's flattening task wrapper."""

    def reset(self, **kwargs):
        self.last, info = self.env.reset(**kwargs)
        return self.last, info

    def step(self, action):
        self.last, *rest = self.env.step(action)
        return self.last, *rest


class _RawView(gym.Wrapper):
    """offtune's live env (rewards, endings) handing out the raw observation an SB3 user sees."""

    def __init__(self, env: DatasetTask, recorder: _Recorder) -> None:
        super().__init__(env)
        self.recorder = recorder
        self.observation_space = env.raw_observation_space

    def reset(self, **kwargs):
        _, info = self.env.reset(**kwargs)
        return self.recorder.last, info

    def step(self, action):
        _, *rest = self.env.step(action)
        return self.recorder.last, *rest


def raw_live_env(info: DatasetInfo) -> gym.Env:
    recorder = _Recorder(make_gym_env(EnvSpec.from_json(info.eval_env_spec)))
    return _RawView(DatasetTask(recorder, info), recorder)


# The consumer: plain SB3 + gymnasium(-robotics), with offtune made unimportable.
CONSUMER = textwrap.dedent("""
    import json, os, sys
    sys.path = [p for p in sys.path if p.rstrip("/") != {repo!r}.rstrip("/")]

    class NoOfftune:
        def find_spec(self, name, path=None, target=None):
            if name == "offtune" or name.startswith("offtune."):
                raise ImportError("offtune is not installed here")

    sys.meta_path.insert(0, NoOfftune())
    try:
        import offtune
        sys.exit("offtune is importable")
    except ImportError:
        pass

    import gymnasium as gym, gymnasium_robotics, numpy as np
    from gymnasium.envs.registration import EnvSpec
    from stable_baselines3 import SAC, TD3

    gym.register_envs(gymnasium_robotics)
    job = json.load(open("job.json"))
    probes = dict(np.load("probes.npz"))
    env = gym.make(EnvSpec.from_json(job["env_spec"]))
    os.remove(env.unwrapped.tmp_xml_file_path)  # gymnasium-robotics leaves its maze model in /tmp
    out = {{}}
    for name, (cls, path) in job["zips"].items():
        model = {{"td3": TD3, "sac": SAC}}[cls].load(path, env=env, device="cpu")
        assert type(model.policy).__module__.startswith("stable_baselines3"), type(model.policy)
        out[name + ":probes"] = model.predict(probes, deterministic=True)[0]
        out[name + ":single"] = model.predict({{k: v[0] for k, v in probes.items()}}, deterministic=True)[0]
        observation, _ = env.reset(seed=3)
        for step in range({rollout}):
            action = model.predict(observation, deterministic=True)[0]
            for key, value in observation.items():
                out[f"{{name}}:obs:{{step}}:{{key}}"] = value
            out[f"{{name}}:act:{{step}}"] = action
            observation, *_ = env.step(action)
    np.savez("actions.npz", **out)
""")


def _live_observations(info: DatasetInfo, count: int = 40) -> dict[str, np.ndarray]:
    """Raw observations of the live env under random actions, from a few seeded resets."""
    env = raw_live_env(info)
    env.action_space.seed(0)
    observations = []
    for seed in range(4):
        observation, _ = env.reset(seed=seed)
        for _ in range(count // 4):
            observations.append(observation)
            observation, _, terminated, truncated, _ = env.step(env.action_space.sample())
            if terminated or truncated:
                break
    env.close()
    return {key: np.stack([o[key] for o in observations]) for key in observations[0]}


def test_zips_load_and_act_like_offtune_without_offtune(checkpoints, zips, tmp_path):
    policies = {algo: offtune.load_policy(path) for algo, path in checkpoints.items()}
    info = policies["iql"].info
    probes = _live_observations(info)
    np.savez(tmp_path / "probes.npz", **probes)
    job = {"env_spec": info.eval_env_spec,
           "zips": {f"{algo}-{sb3}": (sb3, str(path)) for (algo, sb3), path in zips.items()}}
    (tmp_path / "job.json").write_text(json.dumps(job))
    done = subprocess.run([sys.executable, "-I", "-c", CONSUMER.format(repo=str(REPO), rollout=ROLLOUT)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    actions = np.load(tmp_path / "actions.npz")
    for algo, sb3 in zips:
        name, policy = f"{algo}-{sb3}", policies[algo]
        np.testing.assert_allclose(actions[f"{name}:probes"], policy(probes), atol=1e-5)
        np.testing.assert_allclose(actions[f"{name}:single"], policy({k: v[0] for k, v in probes.items()}), atol=1e-5)
        for step in range(ROLLOUT):
            observation = {key: actions[f"{name}:obs:{step}:{key}"] for key in probes}
            np.testing.assert_allclose(actions[f"{name}:act:{step}"], policy(observation), atol=1e-5)


def test_sb3_evaluate_policy_gives_offtunes_returns(checkpoints, zips):
    episodes, seed = 2, 123
    for algo, sb3 in (("iql", "sac"), ("spot", "td3"), ("misa", "sac")):
        loaded = load_agent(checkpoints[algo])
        ours = evaluate(loaded.agent, loaded.info, loaded.normalizer, episodes, seed)
        model = SB3_CLASSES[sb3].load(zips[algo, sb3], device="cpu")
        envs = DummyVecEnv([lambda info=loaded.info: Monitor(raw_live_env(info)) for _ in range(episodes)])
        envs.seed(seed)
        returns, lengths = evaluate_policy(model, envs, n_eval_episodes=episodes, deterministic=True,
                                           return_episode_rewards=True)
        envs.close()
        np.testing.assert_allclose(returns, ours.returns, err_msg=f"{algo} as {sb3}")
        assert lengths == ours.lengths, f"{algo} as {sb3}"


def _normalized(loaded: LoadedAgent, observations: dict[str, np.ndarray]) -> torch.Tensor:
    flat = np.concatenate([observations[key] for key in loaded.info.obs_keys], axis=-1)
    return torch.as_tensor(loaded.normalizer(flat), dtype=torch.float32)


@pytest.mark.parametrize("algo", ["iql", "spot"])
def test_critics_and_targets_carry_over(checkpoints, algo):
    loaded = load_agent(checkpoints[algo])
    observation_space, action_space = env_spaces(loaded.info)
    built = build_sb3_model(loaded, observation_space, action_space)
    assert built.critics
    probes = _live_observations(loaded.info, 16)
    actions = torch.rand(len(probes["observation"]), loaded.info.action_dim) * 2 - 1
    sb3_obs = built.model.policy.obs_to_tensor(probes)[0]
    normalized = _normalized(loaded, probes)
    with torch.no_grad():
        for sb3_critic, ours in ((built.model.critic, loaded.agent.critic),
                                 (built.model.critic_target, loaded.agent.target_critic)):
            sb3_q = torch.cat(sb3_critic(sb3_obs, actions), dim=1).T
            torch.testing.assert_close(sb3_q, ours(normalized, actions), atol=1e-4, rtol=1e-4)


def test_sac_log_std_is_the_policys(checkpoints):
    """IQL's state-independent log σ and MISA's scaled head both reach SB3's ``log_std``."""
    for algo in ("iql", "misa"):
        loaded = load_agent(checkpoints[algo])
        built = build_sb3_model(loaded, *env_spaces(loaded.info), sb3_algo="sac")
        probes = _live_observations(loaded.info, 8)
        with torch.no_grad():
            _, log_std, _ = built.model.actor.get_action_dist_params(built.model.policy.obs_to_tensor(probes)[0])
            if algo == "iql":
                expected = loaded.agent.actor.log_std.clamp(-5, 2).expand_as(log_std)
            else:
                expected = loaded.agent.policy.distribution(_normalized(loaded, probes))[1]
        torch.testing.assert_close(log_std, expected, atol=1e-5, rtol=1e-5)


def test_misa_mean_clip_is_within_tolerance(checkpoints, tmp_path):
    """MISA clips μ at ±9 before tanh, SB3 does not: with μ pushed far past 9 actions still agree."""
    loaded = load_agent(checkpoints["misa"])
    with torch.no_grad():
        loaded.agent.policy.mean_head.bias.copy_(torch.tensor([40.0, -40.0]))
    exported = export_sb3(loaded, tmp_path / "misa.zip", *env_spaces(loaded.info))
    assert exported.max_action_error < 1e-7
    assert 1.0 - np.tanh(9.0) < 1e-7


def _misa_with_layer_norm(info: DatasetInfo) -> LoadedAgent:
    config = MISAConfig(hidden_dims=(8, 8), layer_norm=True)
    agent = MISAAgent(info.obs_dim, info.action_dim, config, torch.device("cpu"))
    return LoadedAgent(agent, "misa", config, info, Normalizer.identity(info.obs_dim), torch.device("cpu"), 0,
                       "misa.pt", {})


def test_what_sb3_cannot_hold_is_an_error_not_a_zip(checkpoints, tmp_path):
    loaded = load_agent(checkpoints["spot"])
    spaces = env_spaces(loaded.info)
    with pytest.raises(OfftuneError, match="export it as td3"):
        export_sb3(loaded, tmp_path / "spot.zip", *spaces, sb3_algo="sac")
    with pytest.raises(OfftuneError, match="LayerNorm"):
        export_sb3(_misa_with_layer_norm(loaded.info), tmp_path / "misa.zip", *spaces)
    observation_space = gym.spaces.Dict({k: v for k, v in spaces[0].items() if k != "desired_goal"})
    with pytest.raises(OfftuneError, match="desired_goal"):
        export_sb3(loaded, tmp_path / "keys.zip", observation_space, spaces[1])
    assert not list(tmp_path.iterdir())
    _register()
    result = CliRunner().invoke(cli, ["export", str(checkpoints["spot"]), "--sb3-algo", "sac", "-o",
                                      str(tmp_path / "x.zip")])
    assert result.exit_code == 2 and "export it as td3" in result.output


def test_rl_zoo_layout(checkpoints, tmp_path):
    first = offtune.export(checkpoints["spot"], rl_zoo=tmp_path, eval_episodes=2, seed=5).rl_zoo
    second = offtune.export(checkpoints["spot"], tmp_path / "copy.zip", rl_zoo=tmp_path, eval_episodes=2).rl_zoo
    env_id = "PointMaze_UMaze-v3"
    run = tmp_path / "td3" / f"{env_id}_1"
    assert first.run_dir == run and second.run_dir == tmp_path / "td3" / f"{env_id}_2"
    assert (run / f"{env_id}.zip").is_file() and (tmp_path / "copy.zip").is_file()
    config = yaml.load((run / env_id / "config.yml").read_text(), Loader=yaml.UnsafeLoader)
    assert config["policy"] == "MultiInputPolicy" and config["normalize"] is False
    assert config["env_kwargs"]["max_episode_steps"] == 300 and "maze_map" in config["env_kwargs"]
    assert yaml.safe_load((run / env_id / "env_kwargs.yml").read_text()) == config["env_kwargs"]
    assert yaml.safe_load((run / env_id / "args.yml").read_text())["env"] == env_id
    evaluations = np.load(run / "evaluations.npz")
    assert evaluations["results"].shape == (1, 2) and evaluations["ep_lengths"].shape == (1, 2)
    loaded = load_agent(checkpoints["spot"])
    ours = evaluate(loaded.agent, loaded.info, loaded.normalizer, 2, 5)
    np.testing.assert_allclose(evaluations["results"][0], ours.returns)
    results = json.loads((run / "results.json").read_text())
    assert results["n_eval_episodes"] == 2 and results["is_deterministic"] is True
    assert "--algo td3 --env PointMaze_UMaze-v3" in first.enjoy_command()
    TD3.load(run / f"{env_id}.zip", device="cpu")


def test_rl_zoo3_finds_the_model(checkpoints, tmp_path):
    """rl-zoo3's own lookup (the one ``rl_zoo3.enjoy`` uses), when the optional ``zoo`` extra is installed."""
    utils = pytest.importorskip("rl_zoo3.utils")
    from huggingface_sb3 import EnvironmentName

    zoo = offtune.export(checkpoints["iql"], rl_zoo=tmp_path, sb3_algo="td3", eval_episodes=1).rl_zoo
    env_name = EnvironmentName(zoo.env_id)
    _, model_path, log_path = utils.get_model_path(0, str(tmp_path), "td3", env_name)
    assert Path(model_path) == zoo.model
    hyperparams, _ = utils.get_saved_hyperparams(str(Path(log_path) / env_name), test_mode=True)
    assert hyperparams["env_kwargs"]["max_episode_steps"] == 300


def test_feature_columns_follow_sb3_key_order():
    """AntMaze: SB3 concatenates achieved_goal (2), desired_goal (2), observation (27) in the space's order."""
    def box(size: int) -> gym.spaces.Box:
        return gym.spaces.Box(-np.inf, np.inf, (size,), np.float64)

    space = gym.spaces.Dict({"observation": box(27), "achieved_goal": box(2), "desired_goal": box(2)})
    d4rl = feature_columns(space, ["achieved_goal", "observation"], 29)
    np.testing.assert_array_equal(d4rl, [0, 1, -1, -1, *range(2, 29)])
    goal = feature_columns(space, ["achieved_goal", "observation", "desired_goal"], 31)
    np.testing.assert_array_equal(goal, [0, 1, 29, 30, *range(2, 29)])
    with pytest.raises(OfftuneError, match="hold 29 numbers, the checkpoint 30"):
        feature_columns(space, ["achieved_goal", "observation"], 30)


@pytest.mark.parametrize("algo, hidden, sb3_algo", [("spot", (16, 16), "td3"), ("iql", (), "td3"), ("iql", (), "sac")])
def test_flat_observations_and_asymmetric_bounds(algo, hidden, sb3_algo):
    """A Box env (MlpPolicy), bounds [-2, 2] x [0, 1], a normaliser, and an actor without hidden layers."""
    torch.manual_seed(0)
    config, agent_cls = (SPOTConfig, SPOTAgent) if algo == "spot" else (IQLConfig, IQLAgent)
    config = config(hidden_dims=hidden)
    info = DatasetInfo("toy", "toy/toy-v0", "locomotion", None, [], 5, 2, [-2.0, 0.0], [2.0, 1.0], "{}", "{}")
    normalizer = Normalizer(np.arange(5, dtype=np.float32), np.linspace(0.1, 3, 5).astype(np.float32), 1e-3)
    transform = RewardTransform(0.25, 0.0, "locomotion_return_scale").to_dict()
    loaded = LoadedAgent(agent_cls(5, 2, config, torch.device("cpu")), algo, config, info, normalizer,
                         torch.device("cpu"), 0, "toy.pt", {"reward_transform": transform})
    observation_space = gym.spaces.Box(-np.inf, np.inf, (5,), np.float64)
    action_space = gym.spaces.Box(np.array([-2.0, 0.0], np.float32), np.array([2.0, 1.0], np.float32))
    built = build_sb3_model(loaded, observation_space, action_space, sb3_algo)
    assert built.policy == "MlpPolicy" and built.policy_kwargs["net_arch"] == list(hidden)
    assert built.reward_transform == transform
    assert parity_error(built.model, Policy(loaded), observation_space) < 1e-6
