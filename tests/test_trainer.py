"""The trainer end to end on the small PointMaze dataset: run directory, checkpoints, resume, fine-tuning."""

import json
import math
import shutil

import pytest
import torch

from offtune.buffers import collect
from offtune.errors import OfftuneError
from offtune.finetune import report as reports
from offtune.finetune import trainer
from offtune.finetune.runs import value_range, value_warning
from offtune.policies.checkpoint import load_agent, load_checkpoint

TINY = {
    "iql": {"hidden_dims": "32,32", "batch_size": 32},
    "spot": {"hidden_dims": "32,32", "batch_size": 32, "vae_steps": 20, "vae_hidden_dim": 32},
    "misa": {"hidden_dims": "32,32", "batch_size": 32, "n_actions": 4, "hmc_num_samples": 2,
             "hmc_burnin_steps": 1},
}


def pretrain_tiny(algo, dataset, out, steps=20, **kwargs):
    return trainer.pretrain(algo, dataset, steps=steps, eval_every=kwargs.pop("eval_every", steps),
                            eval_episodes=2, out=out, device="cpu", overrides=TINY[algo], **kwargs)


@pytest.mark.parametrize("algo", ["iql", "spot", "misa"])
def test_pretrain_writes_the_run_directory_and_a_checkpoint_that_round_trips(algo, pointmaze_dataset, tmp_path):
    result = pretrain_tiny(algo, pointmaze_dataset, tmp_path / "run")
    run = tmp_path / "run"
    assert result.checkpoint == run / "checkpoints" / "final.pt"
    scores = json.loads((run / "scores.json").read_text())
    assert scores["rule"] == "success rate x 100"
    assert [(e["phase"], e["step"], e["episodes"]) for e in scores["evaluations"]] == [("offline", 20, 2)]
    config = json.loads((run / "config.json").read_text())
    assert config["run"]["algo"] == algo and config["algo_config"]["hidden_dims"] == [32, 32]
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["step"] == 20 and metrics[-1]["updates_per_s"] > 0
    assert (run / "metrics.csv").read_text().startswith("step,phase,time")

    raw = torch.load(result.checkpoint, weights_only=True)
    assert raw["format"] == "offtune-checkpoint" and raw["algo"] == algo and raw["step"] == 20
    loaded = load_agent(result.checkpoint)
    observations = torch.randn(5, loaded.info.obs_dim)
    torch.testing.assert_close(loaded.agent.act(observations), load_agent(result.checkpoint).agent.act(observations))


@pytest.mark.parametrize("algo", ["iql", "spot"])
def test_resume_after_ctrl_c_equals_an_uninterrupted_run(algo, pointmaze_dataset, tmp_path, ctrl_c_at):
    whole = pretrain_tiny(algo, pointmaze_dataset, tmp_path / "whole", steps=30, eval_every=10)
    with pytest.raises(trainer.Interrupted) as stopped:
        pretrain_tiny(algo, pointmaze_dataset, tmp_path / "cut", steps=30, eval_every=10, progress=ctrl_c_at(14))
    assert stopped.value.step == 14
    assert load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")["step"] == 14
    resumed = trainer.pretrain(algo, None, resume=tmp_path / "cut", device="cpu")
    first = torch.load(whole.checkpoint, weights_only=True)["agent"]
    second = torch.load(resumed.checkpoint, weights_only=True)["agent"]
    for key, value in first.items():
        if torch.is_tensor(value):
            assert torch.equal(value, second[key]), key
    for name, module in first.items():
        if isinstance(module, dict) and all(torch.is_tensor(v) for v in module.values()):
            for parameter, tensor in module.items():
                assert torch.equal(tensor, second[name][parameter]), f"{name}.{parameter}"
    steps = [e["step"] for e in json.loads((tmp_path / "cut" / "scores.json").read_text())["evaluations"]]
    assert steps == [10, 20, 30]


def test_finetune_reports_before_and_after_and_resumes(pointmaze_dataset, tmp_path, ctrl_c_at):
    offline = pretrain_tiny("iql", pointmaze_dataset, tmp_path / "offline")
    online = trainer.finetune(offline.checkpoint, steps=60, eval_every=30, eval_episodes=2, out=tmp_path / "ft",
                              device="cpu", num_envs=2, online_ratio=0.5)
    scores = json.loads((tmp_path / "ft" / "scores.json").read_text())
    phases = [(e["phase"], e["step"]) for e in scores["evaluations"]]
    assert phases == [("offline", 20), ("online", 0), ("online", 30), ("online", 60)]
    assert scores["before"]["step"] == 0 and scores["after"]["step"] == 60
    assert "regret" in scores and (scores["regret"] is None or 0.0 <= scores["regret"] <= 1.0)
    assert "| iql |" in (tmp_path / "ft" / "report.md").read_text()
    final = load_checkpoint(online.checkpoint)
    assert final["phase"] == "online" and final["step"] == 60

    with pytest.raises(trainer.Interrupted):
        trainer.finetune(offline.checkpoint, steps=60, eval_every=30, eval_episodes=2, out=tmp_path / "cut",
                         device="cpu", progress=ctrl_c_at(20))
    last = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")
    assert last["buffer"]["online"].shape[0] == last["step"] >= 20
    resumed = trainer.finetune(resume=tmp_path / "cut", device="cpu")
    assert resumed.scores["after"]["step"] == 60
    assert [e["step"] for e in resumed.scores["evaluations"] if e["phase"] == "online"] == [0, 30, 60]


def test_finetune_reloads_the_dataset_version_the_pretraining_used(tmp_path, monkeypatch):
    other_version = collect.collect_pointmaze("umaze", steps=1_000, seed=1, dataset_id="offtune/pointmaze/umaze-v1").id
    offline = pretrain_tiny("iql", other_version, tmp_path / "offline")
    loaded = []
    real_load = trainer.datasets.load
    monkeypatch.setattr(trainer.datasets, "load", lambda name, **kw: loaded.append(name) or real_load(name, **kw))
    online = trainer.finetune(offline.checkpoint, steps=10, eval_episodes=1, out=tmp_path / "ft", device="cpu")
    assert loaded == [other_version]
    trainer.finetune(online.checkpoint, steps=10, eval_episodes=1, out=tmp_path / "ft2", device="cpu")
    assert loaded == [other_version, other_version]
    config = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert config["dataset"]["name"] == "pointmaze-umaze-v0" and config["dataset"]["minari_id"] == other_version
    assert reports.aggregate([tmp_path / "ft"]).datasets == [f"pointmaze-umaze-v0 ({other_version})"]


def test_algorithm_names_ignore_case_and_fine_tuning_names_its_folder_like_pretraining(pointmaze_dataset, tmp_path,
                                                                                       monkeypatch):
    monkeypatch.chdir(tmp_path)
    offline = trainer.pretrain("IQL", pointmaze_dataset, steps=10, eval_episodes=1, device="cpu", overrides=TINY["iql"])
    online = trainer.finetune(offline.checkpoint, steps=10, eval_episodes=1, device="cpu")
    assert json.loads((offline.run_dir / "config.json").read_text())["run"]["algo"] == "iql"
    slug = pointmaze_dataset.replace("/", "_")
    assert offline.run_dir.name.startswith(f"iql-{slug}-s0-") and online.run_dir.name.startswith(f"iql-{slug}-s0-ft-")


def test_finetune_reloads_the_exact_minari_id_even_when_its_name_now_finds_another_version(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "datasets"))
    only_local = collect.collect_pointmaze("umaze", steps=1_000, seed=1, dataset_id="offtune/pointmaze/umaze-v1").id
    offline = pretrain_tiny("iql", "pointmaze-umaze-v0", tmp_path / "offline")
    collect.collect_pointmaze("umaze", steps=1_000, seed=2)
    loaded = []
    real_load = trainer.datasets.load
    monkeypatch.setattr(trainer.datasets, "load", lambda name, **kw: loaded.append(name) or real_load(name, **kw))
    trainer.finetune(offline.checkpoint, steps=10, eval_episodes=1, out=tmp_path / "ft", device="cpu")
    assert loaded == [only_local]
    shutil.rmtree(tmp_path / "datasets" / only_local)
    gone = f"dataset {only_local} is not in .*collect pointmaze-umaze --id {only_local}"
    with pytest.raises(OfftuneError, match=gone):
        trainer.finetune(offline.checkpoint, steps=10, eval_episodes=1, out=tmp_path / "ft2", device="cpu")


def test_user_mistakes_are_offtune_errors(pointmaze_dataset, tmp_path):
    with pytest.raises(OfftuneError, match="Did you mean: spot"):
        trainer.pretrain("spott", pointmaze_dataset, steps=1, out=tmp_path / "a")
    with pytest.raises(OfftuneError, match="unknown setting 'expectle'"):
        trainer.pretrain("iql", pointmaze_dataset, steps=1, out=tmp_path / "b", overrides={"expectle": "0.9"})
    with pytest.raises(OfftuneError, match="expected a value of type float"):
        trainer.pretrain("iql", pointmaze_dataset, steps=1, out=tmp_path / "c", overrides={"expectile": "high"})
    with pytest.raises(OfftuneError, match="Did you mean: medium"):
        pretrain_tiny("iql", pointmaze_dataset, tmp_path / "d", matmul_precision="meduim")
    pretrain_tiny("iql", pointmaze_dataset, tmp_path / "offline")
    with pytest.raises(OfftuneError, match="pretraining run"):
        trainer.finetune(resume=tmp_path / "offline", device="cpu")


def test_matmul_precision_is_applied_recorded_and_left_alone_by_default(pointmaze_dataset, tmp_path):
    pretrain_tiny("iql", pointmaze_dataset, tmp_path / "run", matmul_precision="medium")
    assert torch.get_float32_matmul_precision() == "medium"
    assert json.loads((tmp_path / "run" / "config.json").read_text())["run"]["matmul_precision"] == "medium"
    torch.set_float32_matmul_precision("high")
    pretrain_tiny("iql", pointmaze_dataset, tmp_path / "default")
    assert torch.get_float32_matmul_precision() == "high"
    assert json.loads((tmp_path / "default" / "config.json").read_text())["run"]["matmul_precision"] == "high"


def test_a_checkpoint_whose_observation_size_does_not_fit_is_refused(pointmaze_dataset, tmp_path):
    offline = pretrain_tiny("iql", pointmaze_dataset, tmp_path / "offline")
    data = torch.load(offline.checkpoint, weights_only=True)
    data["dataset"]["obs_dim"] = 9
    torch.save(data, tmp_path / "wrong.pt")
    with pytest.raises(OfftuneError, match="observations of size 9"):
        trainer.finetune(tmp_path / "wrong.pt", steps=5, device="cpu", out=tmp_path / "ft")


def test_a_fresh_run_never_writes_into_an_existing_run(pointmaze_dataset, tmp_path):
    pretrain_tiny("iql", pointmaze_dataset, tmp_path / "run")
    with pytest.raises(OfftuneError, match="already holds a run"):
        pretrain_tiny("iql", pointmaze_dataset, tmp_path / "run")


def test_config_file_sits_between_presets_and_set(pointmaze_dataset, tmp_path):
    config_file = tmp_path / "iql.yaml"
    config_file.write_text("expectile: 0.8\nbeta: 5.0\n")
    pretrain_tiny("iql", pointmaze_dataset, tmp_path / "run", steps=2, config_file=config_file)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["algo_config"]
    assert (saved["expectile"], saved["beta"], saved["hidden_dims"]) == (0.8, 5.0, [32, 32])
    config_file.write_text("- not a mapping\n")
    with pytest.raises(OfftuneError, match="must hold a mapping"):
        pretrain_tiny("iql", pointmaze_dataset, tmp_path / "other", steps=2, config_file=config_file)


def test_python_api_names_are_the_functions():
    import offtune
    import offtune.finetune.sweep  # noqa: F401  (a submodule import must not shadow the function)

    assert offtune.finetune is trainer.finetune and offtune.pretrain is trainer.pretrain
    assert callable(offtune.load_policy) and callable(offtune.export)


def test_pretraining_records_its_protocol_and_takes_its_settings(pointmaze_dataset, tmp_path):
    offline = trainer.pretrain("iql", pointmaze_dataset, steps=4, eval_episodes=1, device="cpu", overrides=TINY["iql"],
                               out=tmp_path / "offline", protocol="offline")
    finetune_protocol = trainer.pretrain("iql", pointmaze_dataset, steps=4, eval_episodes=1, device="cpu",
                                         overrides=TINY["iql"], out=tmp_path / "finetune")
    for result, protocol, cosine in ((offline, "offline", True), (finetune_protocol, "finetune", False)):
        config = json.loads((result.run_dir / "config.json").read_text())
        assert config["run"]["protocol"] == protocol
        assert config["algo_config"]["cosine_actor_lr"] is cosine
    with pytest.raises(OfftuneError, match="unknown protocol"):
        trainer.pretrain("iql", pointmaze_dataset, steps=4, out=tmp_path / "bad", protocol="paper")


@pytest.mark.parametrize(("utd", "lam_share"), [(1, 0.5), (2, 0.2)])
def test_online_schedules_count_updates_as_the_official_spot(utd, lam_share, pointmaze_dataset, tmp_path):
    """λ_t = λ · max(lam_end, 1 - updates / T): halfway through T = 10 env steps, utd 2 has done 10 updates."""
    offline = pretrain_tiny("spot", pointmaze_dataset, tmp_path / "offline", steps=4)
    online = trainer.finetune(offline.checkpoint, steps=10, utd=utd, eval_every=5, eval_episodes=1, device="cpu",
                              out=tmp_path / f"ft-{utd}")
    halfway = torch.load(online.run_dir / "checkpoints" / "step_5.pt", weights_only=True)
    assert halfway["agent"]["lam"] == pytest.approx(lam_share * halfway["config"]["lam"])


def test_the_range_of_q_values_the_rewards_allow_by_hand():
    assert value_range((-1.0, 0.0), 0.99) == pytest.approx((-100.0, 0.0))  # AntMaze's r - 1
    assert value_range((0.0, 1.0), 0.9) == pytest.approx((0.0, 10.0))
    assert value_range((0.5, 2.0), 0.5) == pytest.approx((0.5, 4.0))  # an episode may end after one step: Q = r
    assert value_range((-1.0, 0.0), 1.0) == (-math.inf, 0.0)  # undiscounted: no lower bound, never a warning
    assert value_warning({"q": -1e9}, (-1.0, 0.0), 1.0) is None
    # [-100, 0] widened by half its width plus 1: warn beyond -151 and 51, never inside
    assert value_warning({"q": 50.0}, (-1.0, 0.0), 0.99) is None
    assert value_warning({"q": -150.0, "critic_loss": 1e9}, (-1.0, 0.0), 0.99) is None
    assert "diverging" in value_warning({"q": 52.0}, (-1.0, 0.0), 0.99)
    assert "mean q_data is -152" in value_warning({"q_data": -152.0}, (-1.0, 0.0), 0.99)


class WarningRecorder:
    def __init__(self) -> None:
        self.warnings: list[str] = []

    def stage(self, name: str, total: int, completed: int = 0) -> None:
        pass

    def advance(self, count: int, metrics: dict[str, float]) -> None:
        pass

    def evaluation(self, phase: str, step: int, summary: dict) -> None:
        pass

    def warning(self, message: str) -> None:
        self.warnings.append(message)


def test_a_critic_whose_mean_q_leaves_the_reward_range_is_reported_once_per_run(pointmaze_dataset, tmp_path,
                                                                                 monkeypatch):
    quiet = WarningRecorder()
    pretrain_tiny("iql", pointmaze_dataset, tmp_path / "healthy", steps=100, progress=quiet)
    assert quiet.warnings == []

    from offtune.policies.iql import IQLAgent

    update = IQLAgent.update

    def overestimating(self, batch):
        metrics = update(self, batch)
        return {**metrics, "q": metrics["q"] + (1e6 if self.updates > 50 else 0.0)}

    monkeypatch.setattr(IQLAgent, "update", overestimating)
    loud = WarningRecorder()
    result = pretrain_tiny("iql", pointmaze_dataset, tmp_path / "diverging", steps=100, progress=loud)
    assert len(loud.warnings) == 1 and "the critic is diverging" in loud.warnings[0]
    assert loud.warnings[0].startswith("step 5")  # the first log point after update 50 (logs every 2 updates)
    assert result.checkpoint.exists()  # a warning, not a stop: the run finishes
