"""ONNX and TorchScript export: the IQL, SPOT and MISA checkpoints of ``test_export`` (tiny agents
pretrained on PointMaze), run by onnxruntime and ``torch.jit.load`` in a Python process that cannot import
offtune, compared with ``offtune.load_policy`` on observations of the live env. Also what the SB3 zip
records about rewards, and the command's load hint."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import test_export
import torch
from click.testing import CliRunner
from stable_baselines3 import SAC, TD3
from test_export import _live_observations, _misa_with_layer_norm

import offtune
from offtune.buffers.datasets import DatasetInfo
from offtune.buffers.transforms import Normalizer
from offtune.cli.main import _register, cli
from offtune.errors import OfftuneError
from offtune.policies.checkpoint import LoadedAgent, load_agent, load_checkpoint
from offtune.policies.iql import IQLAgent, IQLConfig
from offtune.policies.policy import Policy
from offtune.policies.portable import METADATA_KEY, export_portable
from offtune.policies.sb3 import REWARD_TRANSFORM_KEY

REPO = Path(__file__).resolve().parents[1]
checkpoints = test_export.checkpoints
"""The same tiny pretrained IQL, SPOT and MISA checkpoints as the SB3 tests."""
ALGOS = ("iql", "spot", "misa")

# The consumer: onnxruntime and torch only; offtune made unimportable, and checked to be absent.
CONSUMER = textwrap.dedent("""
    import json, sys
    sys.path = [p for p in sys.path if p.rstrip("/") != {repo!r}.rstrip("/")]

    class NoOfftune:
        def find_spec(self, name, path=None, target=None):
            if name == "offtune" or name.startswith("offtune."):
                raise ImportError("offtune is not installed here")

    sys.meta_path.insert(0, NoOfftune())
    import numpy as np, onnxruntime, torch

    job = json.load(open("job.json"))
    out = {{}}
    for name, path in job.items():
        observations = np.load(f"{{name}}.npy")
        if path.endswith(".onnx"):
            session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
            run = lambda batch: session.run(None, {{"observation": batch}})[0]
        else:
            module = torch.jit.load(path)
            run = lambda batch: module(torch.as_tensor(batch)).detach().numpy()
        out[name + ":batch"] = run(observations)
        out[name + ":single"] = np.concatenate([run(row[None]) for row in observations])
    assert not [m for m in sys.modules if m == "offtune" or m.startswith("offtune.")], "offtune was imported"
    np.savez("actions.npz", **out)
""")


@pytest.fixture(scope="module")
def files(checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    """Every algorithm in both formats; IQL as ONNX through the CLI, the rest through the Python API."""
    folder = tmp_path_factory.mktemp("files")
    _register()
    result = CliRunner().invoke(cli, ["export", str(checkpoints["iql"]), "--format", "onnx", "-o",
                                      str(folder / "iql.onnx")])
    assert result.exit_code == 0, result.output
    assert "ONNX export" in result.output and "onnxruntime.InferenceSession" in result.output
    paths = {("iql", "onnx"): folder / "iql.onnx"}
    for algo in ALGOS:
        for format in ("onnx", "torchscript"):
            if (algo, format) not in paths:
                paths[algo, format] = offtune.export(checkpoints[algo], folder / f"{algo}-{format}",
                                                     format=format).portable.path
    assert paths["spot", "torchscript"].name == "spot-torchscript.pt"
    return paths


def test_files_act_like_load_policy_without_offtune(checkpoints, files, tmp_path):
    """Real observations of the live env (dict, flattened as ``Policy.flat_observations`` does), in a batch
    and one row at a time (the batch axis is dynamic)."""
    policies = {algo: offtune.load_policy(checkpoints[algo]) for algo in ALGOS}
    observations = _live_observations(policies["iql"].info)
    job = {}
    for (algo, format), path in files.items():
        name = f"{algo}-{format}"
        np.save(tmp_path / f"{name}.npy", policies[algo].flat_observations(observations))
        job[name] = str(path)
    (tmp_path / "job.json").write_text(json.dumps(job))
    done = subprocess.run([sys.executable, "-I", "-c", CONSUMER.format(repo=str(REPO))], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    actions = np.load(tmp_path / "actions.npz")
    for algo, format in files:
        name, expected = f"{algo}-{format}", policies[algo](observations)
        assert expected.shape == (len(observations["observation"]), 2)
        for run in ("batch", "single"):
            error = float(np.max(np.abs(actions[f"{name}:{run}"] - expected)))
            print(f"{name} {run}: max |file - load_policy| = {error:.2e}")
            assert error <= 1e-5, f"{name} {run}"


def test_files_say_how_to_feed_them(checkpoints, files):
    """The batch axis is symbolic in the ONNX graph, and both files carry the key order and bounds."""
    graph = onnx.load(str(files["iql", "onnx"])).graph
    assert [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim] == ["batch", 6]
    assert graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    props = {p.key: p.value for p in onnx.load(str(files["misa", "onnx"])).metadata_props}
    extra = {f"{METADATA_KEY}.json": ""}
    torch.jit.load(str(files["spot", "torchscript"]), _extra_files=extra)
    info = load_agent(checkpoints["spot"]).info
    for algo, stored in (("misa", props[METADATA_KEY]), ("spot", extra[f"{METADATA_KEY}.json"])):
        stored = json.loads(stored)
        assert stored["algo"] == algo and stored["observation_keys"] == info.obs_keys
        assert stored["obs_dim"] == 6 and stored["action_low"] == info.action_low


@pytest.mark.parametrize("format", ["onnx", "torchscript"])
def test_actors_sb3_cannot_hold_export_here(checkpoints, format, tmp_path):
    """MISA with LayerNorm, which the SB3 export refuses, is just more layers in the traced graph."""
    loaded = _misa_with_layer_norm(load_agent(checkpoints["misa"]).info)
    exported = export_portable(loaded, tmp_path / "misa", format)
    assert exported.path.exists() and exported.max_action_error <= 1e-5


@pytest.mark.parametrize("format", ["onnx", "torchscript"])
def test_flat_observations_and_asymmetric_bounds(format, tmp_path):
    """A Box env, bounds [-2, 2] x [0, 1] and a normaliser with small σ: both live inside the file."""
    torch.manual_seed(0)
    config = IQLConfig(hidden_dims=(16,))
    info = DatasetInfo("toy", "toy/toy-v0", "locomotion", None, [], 5, 2, [-2.0, 0.0], [2.0, 1.0], "{}", "{}")
    normalizer = Normalizer(np.arange(5, dtype=np.float32), np.linspace(0.1, 3, 5).astype(np.float32), 1e-3)
    loaded = LoadedAgent(IQLAgent(5, 2, config, torch.device("cpu")), "iql", config, info, normalizer,
                         torch.device("cpu"), 0, "toy.pt", {})
    exported = export_portable(loaded, tmp_path / "toy", format)
    observations = np.random.default_rng(1).normal(2.0, 3.0, (32, 5)).astype(np.float32)
    if format == "onnx":
        session = onnxruntime.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
        actions = session.run(None, {"observation": observations})[0]
    else:
        actions = torch.jit.load(str(exported.path))(torch.as_tensor(observations)).detach().numpy()
    expected = Policy(loaded)(observations)
    np.testing.assert_allclose(actions, expected, atol=1e-5)
    assert expected[:, 0].min() < 0.0 and (expected[:, 1] >= 0.0).all() and np.ptp(expected, axis=0).min() > 0.01


def test_bad_formats_and_paths_are_one_line_errors(checkpoints, tmp_path):
    with pytest.raises(OfftuneError, match="unknown export format 'onxx'.*onnx"):
        offtune.export(checkpoints["iql"], tmp_path / "p", format="onxx")
    with pytest.raises(OfftuneError, match="is a folder"):
        offtune.export(checkpoints["iql"], tmp_path, format="torchscript")
    _register()
    runner = CliRunner()
    (tmp_path / "file").write_text("")
    for args, message in (
        (["-o", str(tmp_path)], "is a directory"),
        (["-o", str(tmp_path / "file" / "p.onnx")], "cannot write"),
        (["-o", str(tmp_path / "p.onnx"), "--rl-zoo", str(tmp_path)], "belong to --format sb3"),
        ([], "say where to write the onnx file"),
    ):
        result = runner.invoke(cli, ["export", str(checkpoints["iql"]), "--format", "onnx", *args])
        assert result.exit_code == 2 and message in result.output, result.output
        assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_sb3_zip_records_the_reward_transform(checkpoints, tmp_path, monkeypatch):
    """Stored in the zip's ``data``, restored by ``SAC.load`` / ``TD3.load``, and said by the command; the
    load hint keeps the folder."""
    monkeypatch.chdir(tmp_path)
    _register()
    result = CliRunner().invoke(cli, ["export", str(checkpoints["iql"]), "-o", "o/x.zip"])
    assert result.exit_code == 0, result.output
    text = re.sub(r"[\s│]+", " ", result.output)
    assert "SAC.load('o/x.zip')" in text
    assert "critics trained on rewards r -> 1*r - 1 (antmaze_minus_one)" in text and "raw rewards differ" in text
    with zipfile.ZipFile("o/x.zip") as archive:
        data = json.loads(archive.read("data"))
    expected = {"scale": 1.0, "shift": -1.0, "name": "antmaze_minus_one"}
    assert data[REWARD_TRANSFORM_KEY] == expected
    assert getattr(SAC.load("o/x.zip", device="cpu"), REWARD_TRANSFORM_KEY) == expected
    spot = offtune.export(checkpoints["spot"], tmp_path / "spot.zip").sb3
    stored = getattr(TD3.load(spot.path, device="cpu"), REWARD_TRANSFORM_KEY)
    assert stored == load_checkpoint(checkpoints["spot"])["reward_transform"] == spot.reward_transform
