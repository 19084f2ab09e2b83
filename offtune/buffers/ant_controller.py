"""A goal-reaching ant for the AntMaze envs: a steerable gait, pure numpy, no network.

The published AntMaze data were made by a SAC policy trained for 30M steps (Minari's GoalReachAnt), which
cannot be downloaded here and which a 2-core CPU cannot retrain. The low-level controller that offtune's
AntMaze collector uses instead is a central pattern generator (CPG): every leg's hip and ankle follow
sinusoids of one shared phase, and a PD law turns those joint targets into the env's torques. About forty
numbers describe it, few enough for CMA-ES to tune in an hour (:mod:`offtune.buffers.ant_training`, which
walks the gait on a clock, :class:`ClockedAnt`, and sets ``phase_lead`` after the search).

The controller keeps no state: its action is a function of the observation and the target alone, like the
SAC policy that wrote the published data. This matters for the datasets: an offline learner sees only the
observation, and a gait driven by a clock it cannot see (an open-loop CPG) writes actions that no policy of
the observation can copy well enough to walk. So the phase is read from the legs: the eight joint angles
and velocities are projected onto the gait's own pattern (a least-squares fit of where on the cycle they
are), and the joint targets are set ``phase_lead`` radians further on. The legs then drive the cycle:
it is a limit cycle of ant and controller together, at about the tuned frequency.

Steering uses the ant's symmetry. Rotating the ant by 90 degrees maps leg 1 to leg 2, 2 to 3, 3 to 4 and 4
to 1 (ankles keep their sign once each is written in its leg's own convention), so a gait that walks toward
one body direction gives four gaits, 90 degrees apart, by handing the legs' roles on. The controller picks
the copy that walks closest to the target (never more than 45 degrees off) and removes the rest of the
heading error by a turning term on the hips whose size follows the error. Near a final target the gait
slows down, so the ant stays at its goal.

Layouts (gymnasium's ``ant.xml``, the model inside ``AntMaze_*-v4``): the 27-d observation is torso z,
torso quaternion (w, x, y, z), the joint angles hip 1, ankle 1, ..., hip 4, ankle 4, the torso's linear and
angular velocity, then the joint velocities in the same order. The actuators run hip 4, ankle 4, hip 1,
ankle 1, hip 2, ankle 2, hip 3, ankle 3.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from offtune.errors import OfftuneError

JOINTS = slice(5, 13)
JOINT_VELOCITIES = slice(19, 27)
# Ankle sign of each leg: ankles 2 and 3 bend the other way (ranges -70..-30 degrees, not 30..70).
ANKLE_SIGN = np.array([1.0, -1.0, -1.0, 1.0])
# Position of each joint (observation order) in the action vector.
ACTUATOR_ORDER = np.array([6, 7, 0, 1, 2, 3, 4, 5])
CONTROL_DT = 0.05  # AntMaze's step: MuJoCo timestep 0.01 x frame_skip 5
HYSTERESIS = 0.3  # radians past 45 degrees before the clocked ant changes gait copy
SHIPPED = "goal_reaching_ant.json"


@dataclass(frozen=True)
class Parameter:
    """One named group of gait numbers and the range CMA-ES searches it in."""

    name: str
    size: int
    low: float
    high: float
    why: str


PARAMETERS: tuple[Parameter, ...] = (
    Parameter("frequency", 1, 0.5, 3.0, "strides per second (Hz), shared by every joint"),
    Parameter("hip_amplitude", 4, 0.0, 0.6, "hip swing of each leg role (rad)"),
    Parameter("hip_offset", 4, -0.5, 0.5, "hip angle the swing is centred on (rad)"),
    Parameter("hip_phase", 3, -math.pi, math.pi, "hip phase of roles 2-4; role 1's hip sets phase 0"),
    Parameter("ankle_amplitude", 4, 0.0, 0.5, "ankle lift of each role (rad)"),
    Parameter("ankle_offset", 4, 0.4, 1.3, "ankle angle in the leg's own sign convention (rad)"),
    Parameter("ankle_phase", 4, -math.pi, math.pi, "ankle phase of each role"),
    Parameter("turn_amplitude", 4, -0.5, 0.5, "hip swing added per unit of turning command (rad)"),
    Parameter("turn_phase", 4, -math.pi, math.pi, "phase of that turning swing"),
    Parameter("turn_gain", 1, 0.0, 4.0, "turning command per radian of heading error"),
    Parameter("heading", 1, -math.pi / 4, math.pi / 4, "body direction the gait walks in (rad)"),
    Parameter("kp", 1, 0.5, 6.0, "PD stiffness: action per radian of joint error"),
    Parameter("kd", 1, 0.0, 0.5, "PD damping: action per rad/s of joint velocity"),
    Parameter("slow_radius", 1, 0.1, 2.0, "distance to a final target below which the gait slows (m)"),
    Parameter("min_speed", 1, 0.0, 1.0, "share of the stride kept at the target itself"),
    Parameter("phase_lead", 1, 0.0, math.pi, "how far ahead of the phase read from the legs the targets are set"),
)
DIMENSION = sum(parameter.size for parameter in PARAMETERS)


@dataclass(frozen=True)
class Gait:
    """The gait numbers, by name; ``unit`` is the same point in CMA-ES's unit cube."""

    unit: np.ndarray

    def __post_init__(self) -> None:
        if self.unit.shape != (DIMENSION,) or not np.all(np.isfinite(self.unit)):
            raise OfftuneError(f"an ant gait has {DIMENSION} finite numbers, got shape {self.unit.shape}")

    @classmethod
    def from_values(cls, **values: Any) -> Gait:
        """A gait from values in each group's range (a hand-made starting point for the search)."""
        parts = []
        for parameter in PARAMETERS:
            value = np.broadcast_to(np.asarray(values[parameter.name], dtype=np.float64), (parameter.size,))
            parts.append((value - parameter.low) / (parameter.high - parameter.low))
        return cls(np.clip(np.concatenate(parts), 0.0, 1.0))

    @classmethod
    def from_unit(cls, unit: np.ndarray) -> Gait:
        """Any real vector: each coordinate folds into [0, 1] (a triangle wave), so CMA-ES needs no bounds."""
        folded = np.abs(np.mod(np.asarray(unit, dtype=np.float64) + 1.0, 2.0) - 1.0)
        return cls(folded)

    def values(self) -> dict[str, np.ndarray]:
        """Each group scaled from [0, 1] onto its range."""
        out, start = {}, 0
        for parameter in PARAMETERS:
            part = self.unit[start : start + parameter.size]
            out[parameter.name] = parameter.low + part * (parameter.high - parameter.low)
            start += parameter.size
        return out

    def to_json(self, **about: Any) -> str:
        """Named values (for people) plus the unit vector (what loading reads), with notes in ``about``."""
        named = {name: value.round(6).tolist() for name, value in self.values().items()}
        return json.dumps({"about": about, "values": named, "unit": self.unit.tolist()}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Gait:
        return cls(np.asarray(json.loads(text)["unit"], dtype=np.float64))

    @classmethod
    def load(cls, path: str | Path | None = None) -> Gait:
        """A gait file written by ``offtune dataset train-controller``; by default the one shipped with offtune."""
        if path is None:
            text = resources.files("offtune.buffers").joinpath("data", SHIPPED).read_text()
        else:
            try:
                text = Path(path).read_text()
            except OSError as error:
                raise OfftuneError(f"cannot read ant gait {path}: {error.strerror}") from error
        try:
            return cls.from_json(text)
        except (ValueError, KeyError, TypeError) as error:
            raise OfftuneError(f"{path or SHIPPED} is not an ant gait file ({error})") from error


def heading_of(quaternion: np.ndarray) -> float:
    """Yaw of the torso's x axis in the world (quaternion w, x, y, z)."""
    w, x, y, z = quaternion
    return math.atan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))


def _wrap(angle: float) -> float:
    return (angle + math.pi) % (2.0 * math.pi) - math.pi


class GoalReachingAnt:
    """The gait steered toward a target: a function of the observation and the target, with no state
    (its subclass :class:`ClockedAnt`, the search's form of the gait, keeps a phase)."""

    def __init__(self, gait: Gait | None = None) -> None:
        gait = gait or Gait.load()
        values = gait.values()
        # Joint velocity (rad/s) divided by the cycle's angular frequency: the quadrature component, in radians.
        self.velocity_scale = 1.0 / (2.0 * math.pi * float(values["frequency"][0]))
        self.hip_amplitude, self.hip_offset = values["hip_amplitude"], values["hip_offset"]
        self.hip_phase = np.concatenate([[0.0], values["hip_phase"]])
        self.ankle_amplitude, self.ankle_offset = values["ankle_amplitude"], values["ankle_offset"]
        self.ankle_phase = values["ankle_phase"]
        self.turn_amplitude, self.turn_phase = values["turn_amplitude"], values["turn_phase"]
        self.turn_gain = float(values["turn_gain"][0])
        self.heading = float(values["heading"][0])
        self.kp, self.kd = float(values["kp"][0]), float(values["kd"][0])
        self.slow_radius, self.min_speed = float(values["slow_radius"][0]), float(values["min_speed"][0])
        self.phase_lead = float(values["phase_lead"][0])
        # Leg j plays role (j - copy) mod 4 in gait copy ``copy``.
        self.roles = np.array([[(leg - copy) % 4 for leg in range(4)] for copy in range(4)])

    def _steer(self, bearing: float) -> tuple[int, float]:
        """The gait copy closest to ``bearing`` (body frame) and the heading error it leaves."""
        copy = round((bearing - self.heading) / (math.pi / 2)) % 4
        return copy, _wrap(bearing - self.heading - copy * math.pi / 2)

    def _pattern(self, copy: int, turn: float, speed: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Joint targets (observation order) as ``offset + sine * sin(phase) + cosine * cos(phase)``."""
        hip_sine = self.hip_amplitude * np.cos(self.hip_phase) + turn * self.turn_amplitude * np.cos(self.turn_phase)
        hip_cosine = self.hip_amplitude * np.sin(self.hip_phase) + turn * self.turn_amplitude * np.sin(self.turn_phase)
        roles = self.roles[copy]
        offset, sine, cosine = np.empty(8), np.empty(8), np.empty(8)
        offset[0::2], sine[0::2], cosine[0::2] = self.hip_offset[roles], hip_sine[roles], hip_cosine[roles]
        offset[1::2] = ANKLE_SIGN * self.ankle_offset[roles]
        sine[1::2] = ANKLE_SIGN * (self.ankle_amplitude * np.cos(self.ankle_phase))[roles]
        cosine[1::2] = ANKLE_SIGN * (self.ankle_amplitude * np.sin(self.ankle_phase))[roles]
        return offset, speed * sine, speed * cosine

    def _phase_of_legs(self, ant_observation: np.ndarray, offset: np.ndarray, sine: np.ndarray, cosine: np.ndarray):
        """Where on the cycle the legs are: the least-squares phase of ``angle - offset = sine sin + cosine cos``
        together with its derivative (velocity, scaled to radians of the cycle)."""
        angle = ant_observation[JOINTS] - offset
        velocity = ant_observation[JOINT_VELOCITIES] * self.velocity_scale
        return math.atan2(sine @ angle - cosine @ velocity, cosine @ angle + sine @ velocity)

    def _bearing_and_speed(
        self, ant_observation: np.ndarray, position: np.ndarray, target: np.ndarray, final: bool
    ) -> tuple[float, float]:
        """The target's direction in the body frame, and the share of the stride to walk at (slower near a
        final target)."""
        offset_to_target = target - position
        distance = math.hypot(offset_to_target[0], offset_to_target[1])
        bearing = math.atan2(offset_to_target[1], offset_to_target[0]) - heading_of(ant_observation[1:5])
        speed = min(1.0, max(self.min_speed, distance / self.slow_radius)) if final else 1.0
        return bearing, speed

    def act(self, ant_observation: np.ndarray, position: np.ndarray, target: np.ndarray, final: bool = True):
        """Torques (env action, float32) that walk the ant at ``position`` toward ``target``.

        ``final`` slows the gait within ``slow_radius`` of the target, so the ant stays at a goal; waypoints
        on the way pass ``final=False`` and are walked through at full stride.
        """
        bearing, speed = self._bearing_and_speed(ant_observation, position, target, final)
        copy, heading_error = self._steer(bearing)
        turn = min(1.0, max(-1.0, self.turn_gain * heading_error))
        offset, sine, cosine = self._pattern(copy, turn, speed)
        phase = self._phase_of_legs(ant_observation, offset, sine, cosine) + self.phase_lead
        joint_target = offset + sine * math.sin(phase) + cosine * math.cos(phase)
        return self._pd_torque(ant_observation, joint_target)

    def _pd_torque(self, ant_observation: np.ndarray, joint_target: np.ndarray) -> np.ndarray:
        """The PD law's torques toward ``joint_target`` (observation order), as the env's clipped float32 action."""
        torque = self.kp * (joint_target - ant_observation[JOINTS]) - self.kd * ant_observation[JOINT_VELOCITIES]
        return np.clip(torque[ACTUATOR_ORDER], -1.0, 1.0).astype(np.float32)

    def __call__(self, observation: dict[str, np.ndarray], target: np.ndarray | None = None, final: bool = True):
        """``act`` on an AntMaze observation dict; the target defaults to its ``desired_goal``."""
        goal = observation["desired_goal"] if target is None else target
        return self.act(observation["observation"], observation["achieved_goal"], goal, final)


class ClockedAnt(GoalReachingAnt):
    """The same gait on a clock (an open-loop CPG): the form the gait search tunes it in.

    The phase advances by the gait's frequency every step, and the gait copy changes only ``HYSTERESIS``
    past 45 degrees, so a candidate strides the same way whatever its legs do; ``phase_lead`` is unused (the
    search sets it afterwards, for :class:`GoalReachingAnt`). It keeps a phase and a copy: one per episode.
    """

    def __init__(self, gait: Gait | None = None) -> None:
        gait = gait or Gait.load()
        super().__init__(gait)
        # As the shipped gait's search computed it; an equal expression can round differently.
        self.omega = 2.0 * math.pi * float(gait.values()["frequency"][0]) * CONTROL_DT
        self.phase = 0.0
        self.copy = 0

    def _steer_held(self, bearing: float) -> float:
        """Keep the gait copy unless ``bearing`` is past 45 degrees plus the margin; the heading error left."""
        error = _wrap(bearing - self.heading - self.copy * math.pi / 2)
        if abs(error) > math.pi / 4 + HYSTERESIS:
            self.copy, error = self._steer(bearing)
        return error

    def act(self, ant_observation: np.ndarray, position: np.ndarray, target: np.ndarray, final: bool = True):
        bearing, speed = self._bearing_and_speed(ant_observation, position, target, final)
        turn = min(1.0, max(-1.0, self.turn_gain * self._steer_held(bearing)))
        self.phase += self.omega
        hip = self.hip_offset + speed * (
            self.hip_amplitude * np.sin(self.phase + self.hip_phase)
            + turn * self.turn_amplitude * np.sin(self.phase + self.turn_phase)
        )
        ankle = self.ankle_offset + speed * self.ankle_amplitude * np.sin(self.phase + self.ankle_phase)
        roles = self.roles[self.copy]
        joint_target = np.empty(8)
        joint_target[0::2] = hip[roles]
        joint_target[1::2] = ANKLE_SIGN * ankle[roles]
        return self._pd_torque(ant_observation, joint_target)
