"""``offtune evaluate`` repeats training's score: by default it evaluates with the seeds and episode count the
checkpoint's run evaluated with, and ``--seed`` still chooses other episodes.

Hopper, whose returns differ from one start to the next, so that other seeds show in the score (a maze's
untrained policy scores 0 from any start).
"""

import json

import pytest
from click.testing import CliRunner

from offtune.cli.main import _register, cli
from offtune.finetune import trainer

_register()
SCORED = ("score", "std", "episodes", "return", "length")


@pytest.fixture(scope="module")
def runs(hopper_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    offline = trainer.pretrain("iql", hopper_dataset, steps=20, seed=3, eval_episodes=3, device="cpu",
                               overrides={"hidden_dims": (32, 32), "batch_size": 32}, out=root / "offline")
    online = trainer.finetune(offline.checkpoint, steps=20, eval_episodes=4, device="cpu", out=root / "online")
    return offline.run_dir, online.run_dir


def evaluate(run_dir, *args):
    result = CliRunner().invoke(cli, ["evaluate", str(run_dir / "checkpoints" / "final.pt"), "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize("phase", [0, 1], ids=["pretrained", "fine-tuned"])
def test_a_final_checkpoint_scores_what_its_last_evaluation_scored(runs, phase):
    run_dir = runs[phase]
    last = json.loads((run_dir / "scores.json").read_text())["evaluations"][-1]
    seed = json.loads((run_dir / "config.json").read_text())["run"]["seed"]
    data = evaluate(run_dir)
    assert data["seed"] == seed + trainer.EVALUATION_SEED_OFFSET == 3 + 10_000
    assert {k: data[k] for k in SCORED} == {k: last[k] for k in SCORED}


def test_seed_still_chooses_other_episodes(runs):
    default = evaluate(runs[0])
    other = evaluate(runs[0], "--seed", "0")
    assert other["seed"] == 0 and other["episodes"] == default["episodes"] == 3
    assert other["returns"] != default["returns"]
