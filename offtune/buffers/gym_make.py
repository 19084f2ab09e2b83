"""``gym.make`` as offtune calls it, for every env it builds.

Three callers need an env: collecting a dataset (:mod:`offtune.buffers.collect`), reading a maze's scale
(:mod:`offtune.buffers.mazes`) and the live env of fine-tuning and evaluation (:mod:`offtune.finetune.envs`).
The first two are jobs of ``buffers``, and arrows only point down the layers, so the one helper they share
lives here, in the lowest layer; ``finetune.envs`` imports it from here and adds the dataset's task on top.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any


def make_gym_env(spec: Any, **kwargs: Any) -> Any:
    """``gym.make(spec, **kwargs)`` with gymnasium-robotics registered and its "out of date" warning silenced.

    The warning says the maze envs have a v5; the Minari maze data were recorded on v4, so offtune builds v4
    on purpose. gymnasium-robotics is imported here, not at module level, because it is slow to import and
    only envs need it.
    """
    import gymnasium as gym
    import gymnasium_robotics

    gym.register_envs(gymnasium_robotics)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is out of date.*")
        env = gym.make(spec, **kwargs)
    _remove_model_file(env)
    return env


def _remove_model_file(env: Any) -> None:
    """Delete the MuJoCo XML a maze env wrote to the temp folder.

    gymnasium-robotics writes one file per maze env and never deletes it (thousands over a sweep); by the
    time ``gym.make`` returns the model is compiled, so the file is no longer needed.
    """
    model_file = getattr(env.unwrapped, "tmp_xml_file_path", None)
    if model_file is not None:
        Path(model_file).unlink(missing_ok=True)
