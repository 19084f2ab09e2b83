"""The algorithms: each name maps to its config dataclass and its agent class (see ``base.Agent``)."""

from __future__ import annotations

from offtune.policies.base import Agent
from offtune.policies.iql import IQLAgent, IQLConfig
from offtune.policies.misa import MISAAgent, MISAConfig
from offtune.policies.spot import SPOTAgent, SPOTConfig

ALGORITHMS: dict[str, tuple[type, type[Agent]]] = {
    "iql": (IQLConfig, IQLAgent),
    "spot": (SPOTConfig, SPOTAgent),
    "misa": (MISAConfig, MISAAgent),
}
