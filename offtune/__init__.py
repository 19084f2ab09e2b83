"""offtune: pretrain a policy offline (IQL, SPOT, MISA) on a Minari dataset, fine-tune it online in the
live MuJoCo environment, report before -> after scores, and export it to Stable-Baselines3.

The Python API mirrors the command line::

    import offtune
    run = offtune.pretrain("iql", "offtune/pointmaze/umaze-v0", steps=20_000)
    tuned = offtune.finetune(run.checkpoint, steps=20_000)
    policy = offtune.load_policy(tuned.checkpoint)
"""

from __future__ import annotations

from offtune.buffers.datasets import load as load_dataset
from offtune.finetune.evaluate import evaluate
from offtune.finetune.export import export
from offtune.finetune.trainer import finetune, pretrain
from offtune.policies.checkpoint import load_agent, load_checkpoint
from offtune.policies.policy import load_policy

__version__ = "0.1.0"

# ``finetune`` names both a subpackage and the function; importing the function last keeps
# ``offtune.finetune(...)`` callable (later submodule imports do not rebind it).
__all__ = [
    "pretrain",
    "finetune",
    "evaluate",
    "load_checkpoint",
    "load_agent",
    "load_policy",
    "export",
    "load_dataset",
    "__version__",
]
