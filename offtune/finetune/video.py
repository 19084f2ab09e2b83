"""Videos of a policy in its live env, rendered offscreen by MuJoCo: what a score looks like.

Episode ``k`` of a video starts from the reset seeded ``seed + k``, as evaluation's ``k``-th env does, so a
video recorded with the evaluation seed shows the episodes the score was taken from (as many as fit in one
round of evaluation's parallel envs). Frames stream to the writer as they are rendered: an AntMaze video of
many 700-step episodes never sits in memory (a GIF does, as Pillow writes it at the end: keep GIFs short).

MuJoCo picks its OpenGL backend from ``MUJOCO_GL`` when it creates its first context. Machines without a
display cannot use its default (GLFW), so :func:`offscreen_backend` sets EGL, or OSMesa, when their library
is installed and the user chose nothing.
"""

from __future__ import annotations

import ctypes.util
import math
import os
from dataclasses import dataclass
from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import torch

from offtune.buffers.datasets import DatasetInfo
from offtune.buffers.transforms import Normalizer
from offtune.errors import OfftuneError
from offtune.finetune.envs import make_env
from offtune.finetune.evaluate import Evaluation, check_observation_size, to_env_actions

VIDEO_FORMATS = ("mp4", "gif")
MAX_FPS = 50
"""Frames per second of simulated time at most: browsers play GIFs no faster, and a viewer needs no more
(Hopper renders at 125 fps, so its videos keep every third frame)."""
GL_PACKAGES = "libegl1 libegl-mesa0 libgl1-mesa-dri libopengl0"
"""What EGL rendering needs on Debian/Ubuntu (Mesa's software renderer where there is no GPU), as .ci/run installs."""


@dataclass
class Recording:
    """A written video and the episodes it shows (their returns and scores, as an evaluation reports them)."""

    path: Path
    fmt: str
    frames: int
    width: int
    height: int
    fps: float
    evaluation: Evaluation
    cut: int
    """Episodes stopped by ``max_steps`` before they ended: their returns are of the clip only."""


def video_path(path: str | Path, fmt: str | None = None) -> tuple[Path, str]:
    """The file a video goes to and its format: from the name's suffix, or ``fmt`` appended to a bare name.

    Checked before any episode runs, so that a mistake costs no rendering.
    """
    path = Path(path)
    suffix = path.suffix.lower().lstrip(".")
    if fmt is not None and fmt not in VIDEO_FORMATS:
        raise OfftuneError(f"video format '{fmt}' is not one of {', '.join(VIDEO_FORMATS)}")
    if not suffix:
        fmt = fmt or "mp4"
        path = path.with_name(f"{path.name}.{fmt}")
    elif suffix not in VIDEO_FORMATS:
        raise OfftuneError(f"{path}: a video is written as .mp4 or .gif, not .{suffix}")
    elif fmt is not None and fmt != suffix:
        raise OfftuneError(f"{path} ends in .{suffix}, but the format asked for is {fmt}")
    else:
        fmt = suffix
    if path.is_dir():
        raise OfftuneError(f"{path} is a directory; give the video a file name such as {path / 'video.mp4'}")
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.open("ab").close()
    except FileExistsError:
        raise OfftuneError(f"cannot write a video to {path}: {path.parent} is a file, not a folder") from None
    except OSError as error:
        raise OfftuneError(f"cannot write a video to {path}: {error.strerror or error}") from None
    if not existed:
        path.unlink()
    return path, fmt


def offscreen_backend() -> str | None:
    """``MUJOCO_GL`` as the user set it, else EGL, else OSMesa when its library is installed (the one set in
    ``MUJOCO_GL``); None when neither is, which leaves gymnasium to try GLFW (a desktop with a display)."""
    if chosen := os.environ.get("MUJOCO_GL"):
        return chosen
    for backend, library in (("egl", "EGL"), ("osmesa", "OSMesa")):
        if ctypes.util.find_library(library):
            os.environ["MUJOCO_GL"] = backend
            return backend
    return None


def _writer(path: Path, fmt: str, fps: float):
    """An imageio writer that takes one frame at a time (H.264 in MP4, or an endlessly looping GIF)."""
    if fmt == "mp4":
        return imageio.get_writer(path, format="FFMPEG", mode="I", fps=fps, codec="libx264")
    return imageio.get_writer(path, format="GIF", mode="I", duration=1000.0 / fps, loop=0)


def _first_frame(env, backend: str | None) -> np.ndarray:
    """The first rendered frame; a machine that cannot render says what to install, in one line."""
    try:
        return env.render()
    except (RuntimeError, ImportError, AttributeError, OSError) as error:
        tried = f"with MUJOCO_GL={backend}" if backend else "(no EGL or OSMesa library here, and GLFW failed)"
        raise OfftuneError(
            f"MuJoCo cannot render offscreen {tried}: {type(error).__name__}: {error}; it needs EGL "
            f"(Debian/Ubuntu: apt-get install {GL_PACKAGES}) or OSMesa (libosmesa6, then MUJOCO_GL=osmesa)"
        ) from None


@torch.no_grad()
def record_video(
    agent,
    info: DatasetInfo,
    normalizer: Normalizer,
    path: str | Path,
    episodes: int = 1,
    seed: int = 0,
    device: torch.device | str = "cpu",
    fmt: str | None = None,
    max_steps: int | None = None,
) -> Recording:
    """Run ``episodes`` deterministic episodes (seeded ``seed, seed+1, ...``) and write them as one video.

    ``max_steps`` cuts each episode after that many steps, for a short clip. The frames are the env's own
    render size; frame ``t`` of an episode is the state after ``t`` steps, every ``ceil(fps / MAX_FPS)``-th
    one kept.
    """
    path, fmt = video_path(path, fmt)
    backend = offscreen_backend()
    env = make_env(info, render_mode="rgb_array")
    evaluation = Evaluation([], [], [], [])
    frames, cut = 0, 0
    try:
        check_observation_size(env, info)
        render_fps = float(env.metadata.get("render_fps") or MAX_FPS)
        every = math.ceil(render_fps / MAX_FPS)
        observation, _ = env.reset(seed=seed)
        frame = _first_frame(env, backend)
        height, width = frame.shape[:2]
        writer = _writer(path, fmt, render_fps / every)
        try:
            for episode in range(episodes):
                if episode:
                    observation, _ = env.reset(seed=seed + episode)
                    frame = env.render()
                total, step, ended, env_info = 0.0, 0, False, {}
                while True:
                    if step % every == 0:
                        writer.append_data(frame)
                        frames += 1
                    if ended or step == max_steps:
                        break
                    obs = torch.as_tensor(normalizer(observation[None]), dtype=torch.float32, device=device)
                    action = agent.act(obs, deterministic=True).cpu().numpy()
                    observation, reward, terminated, truncated, env_info = env.step(to_env_actions(action, info)[0])
                    total += float(reward)
                    step += 1
                    ended = bool(terminated or truncated)
                    frame = env.render()
                cut += not ended
                evaluation.returns.append(total)
                evaluation.scores.append(float(info.score_rule.score(total)))
                if "success" in env_info:
                    evaluation.successes.append(bool(env_info["success"]))
                evaluation.lengths.append(step)
        finally:
            writer.close()
    finally:
        env.close()
    return Recording(path, fmt, frames, width, height, render_fps / every, evaluation, cut)


@dataclass
class VideoSchedule:
    """Videos during training: ``episodes`` episodes at every ``every``-th step, as ``folder/step_N.fmt``
    (``max_steps`` as in :func:`record_video`).

    What ``finetune --video-every N`` needs: ``due(step)`` in the loop, then ``record(...)``.
    """

    folder: Path
    every: int
    episodes: int = 1
    fmt: str = "mp4"
    max_steps: int | None = None

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def path(self, step: int) -> Path:
        return Path(self.folder) / f"step_{step}.{self.fmt}"

    def record(self, agent, info: DatasetInfo, normalizer: Normalizer, step: int, seed: int,
               device: torch.device | str = "cpu") -> Recording:
        return record_video(agent, info, normalizer, self.path(step), self.episodes, seed, device, self.fmt,
                            self.max_steps)
