"""The compiled update (``agent.compile()``, ``--compile``) computes what the eager update computes.

In float64 both paths run the same math with rounding far below any real difference, so after 100 updates the
weights, optimiser states and losses must agree to 1e-9; a wrong gradient, a missed Adam bias correction or a
target update left out of the graph shows at 1e-4 or more. Random draws (SPOT's target noise and dropout) come
from the same generator in both (inductor's ``fallback_random``).
"""

from __future__ import annotations

from collections.abc import Iterator

import agent_checks
import pytest
import torch
import torch._dynamo
import torch._inductor.config

from offtune.buffers.replay import Batch
from offtune.errors import OfftuneError
from offtune.finetune.runtime import AUTO_COMPILE_UPDATES, check_compile_mode, compile_agent
from offtune.policies.iql import IQLAgent, IQLConfig
from offtune.policies.misa import MISAAgent, MISAConfig
from offtune.policies.spot import SPOTAgent, SPOTConfig
from offtune.policies.steps import adam_step, init_adam_state

OBS, ACT, BATCH = 5, 3, 32
TOLERANCE = 1e-9


@pytest.fixture
def float64_same_random_draws() -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch._dynamo.reset()
    with torch._inductor.config.patch(fallback_random=True):
        yield
    torch.set_default_dtype(previous)
    torch._dynamo.reset()


def iql_agent(device: str = "cpu") -> IQLAgent:
    torch.manual_seed(0)
    agent = IQLAgent(OBS, ACT, IQLConfig(hidden_dims=(32, 32), batch_size=BATCH), device)
    agent.on_offline_start(150)  # the cosine actor lr changes at every update
    return agent


def spot_agent(device: str = "cpu") -> SPOTAgent:
    torch.manual_seed(0)
    agent = SPOTAgent(OBS, ACT, SPOTConfig(hidden_dims=(32, 32), vae_hidden_dim=32, batch_size=BATCH, lam=0.3,
                                           actor_dropout=0.1, online_discount=0.995, vae_steps=20), device)
    agent.prepare(lambda n: on(device, agent_checks.random_batch(OBS, ACT, n, seed=n)), lambda step, metrics: None)
    return agent


def misa_agent(device: str = "cpu") -> MISAAgent:
    """HMC on offline and off online (both update graphs), adaptation on and off (both HMC step graphs), the
    Lagrange multiplier, and γ₁, γ₂ cooling online."""
    torch.manual_seed(0)
    return MISAAgent(OBS, ACT, MISAConfig(hidden_dims=(32, 32), batch_size=BATCH, n_actions=6, hmc_burnin_steps=3,
                                          hmc_num_samples=4, use_lagrange=True, min_q_weight_end=0.5), device)


def on(device: str, batch: Batch) -> Batch:
    return Batch(*(tensor.to(device) for tensor in batch))


def run_updates(agent, count: int, online_at: int) -> list[dict[str, torch.Tensor]]:
    """``count`` updates on fixed batches, switching to the online phase (SPOT: λ cools, γ changes) midway."""
    history = []
    for index in range(count):
        if index == online_at:
            agent.on_online_start()
        if index >= online_at:
            agent.anneal((index - online_at) / count)
        torch.manual_seed(1000 + index)
        history.append(agent.update(agent_checks.random_batch(OBS, ACT, BATCH, seed=index)))
    return history


def assert_same_state(eager_state, compiled_state) -> None:
    if isinstance(eager_state, torch.Tensor):
        assert eager_state.dtype == compiled_state.dtype and eager_state.shape == compiled_state.shape
        assert (eager_state.double() - compiled_state.double()).abs().max().item() <= TOLERANCE
    elif isinstance(eager_state, dict):
        assert eager_state.keys() == compiled_state.keys()
        for key in eager_state:
            assert_same_state(eager_state[key], compiled_state[key])
    elif isinstance(eager_state, (list, tuple)):
        assert len(eager_state) == len(compiled_state)
        for eager_item, compiled_item in zip(eager_state, compiled_state, strict=True):
            assert_same_state(eager_item, compiled_item)
    else:
        assert eager_state == compiled_state


@pytest.mark.parametrize("make_agent", [iql_agent, spot_agent, misa_agent], ids=["iql", "spot", "misa"])
def test_compiled_and_eager_updates_agree_after_100_updates(float64_same_random_draws, make_agent):
    eager, compiled = make_agent(), make_agent()
    compiled_update = compiled.compile()
    eager_history = run_updates(eager, 100, online_at=60)
    compiled_history = run_updates(compiled, 100, online_at=60)
    for eager_metrics, compiled_metrics in zip(eager_history, compiled_history, strict=True):
        assert eager_metrics.keys() == compiled_metrics.keys()
        for name, value in eager_metrics.items():
            assert compiled_metrics[name].item() == pytest.approx(value.item(), rel=TOLERANCE, abs=TOLERANCE), name
    # Weights, optimiser states (Adam's moments and step counts) and counters: one checkpoint for both paths.
    assert_same_state(eager.state_dict(), compiled.state_dict())
    # One graph per kind of step (SPOT: critic-only and critic + actor; MISA: the update with and, online,
    # without HMC chains, and an HMC step with and without step-size adaptation), compiled once: the scheduled
    # lr, λ, γ₁, γ₂ and the online switch reach the graph as tensors or as a one-off recompile, not a recompile
    # per update.
    if isinstance(compiled, MISAAgent):
        assert [len(step.compiled_variants) for step in compiled_update.steps] == [2, 2]
    else:
        assert len(compiled_update.compiled_variants) == (2 if isinstance(compiled, SPOTAgent) else 1)
    assert compiled_update.compile_seconds > 0


def test_compiled_adam_step_is_torch_adam():
    """In float64, so that a bias correction computed in float32 (5 digits lost in 1 - 0.999^t) shows."""
    torch.manual_seed(0)
    params = [torch.randn(4, 3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)]
    reference = [p.clone().requires_grad_(True) for p in params]
    ours = [p.clone().requires_grad_(True) for p in params]
    reference_optimizer = torch.optim.Adam(reference, lr=1e-3, foreach=False)
    ours_optimizer = torch.optim.Adam(ours, lr=1e-3)
    init_adam_state(ours_optimizer)
    for step in range(5):
        grads = [torch.randn_like(params[0]) * 10.0**-step, torch.randn_like(params[1]) * 1e-6]  # to eps-sized
        for param, grad in zip(reference, grads, strict=True):
            param.grad = grad.clone()
        reference_optimizer.step()
        adam_step(ours_optimizer, ours, grads, lr=None)
    for expected, got in zip(reference, ours, strict=True):
        assert torch.allclose(expected, got, rtol=0, atol=1e-12)
    assert ours_optimizer.state[ours[0]]["step"].item() == 5.0


def test_compile_modes():
    agent = IQLAgent(OBS, ACT, IQLConfig(hidden_dims=(8,)))
    assert compile_agent(agent, "off", 10**9) is None
    assert compile_agent(agent, "auto", AUTO_COMPILE_UPDATES - 1) is None
    assert check_compile_mode("auto") == "auto"
    with pytest.raises(OfftuneError, match="unknown --compile 'yes'"):
        check_compile_mode("yes")
    assert compile_agent(agent, "auto", AUTO_COMPILE_UPDATES) is not None
    assert compile_agent(agent, "on", 1) is not None


def test_a_failed_compile_runs_eagerly_under_auto_and_stops_under_on(monkeypatch):
    def broken_compiler(step, **options):
        def compiled(*args):
            raise RuntimeError("C++ compiler not found")
        return compiled

    monkeypatch.setattr(torch, "compile", broken_compiler)
    batch = agent_checks.random_batch(OBS, ACT, BATCH, seed=0)
    eager, fallback = iql_agent(), iql_agent()
    compiled = compile_agent(fallback, "auto", AUTO_COMPILE_UPDATES)
    with pytest.warns(UserWarning, match="compiling the update failed .RuntimeError: C.. compiler not found.; "
                                         "running it eagerly"):
        fallback.update(batch)
    eager.update(batch)
    agent_checks.assert_same(eager.state_dict(), fallback.state_dict())  # the update ran once, eagerly
    assert compiled.step is compiled.eager
    required = iql_agent()
    compile_agent(required, "on", 1)
    with pytest.raises(OfftuneError, match="compiling the update failed .* use --compile off"):
        required.update(batch)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: checks that the hot loop never syncs the host")
@pytest.mark.parametrize("make_agent", [iql_agent, spot_agent, misa_agent], ids=["iql", "spot", "misa"])
def test_compiled_update_does_not_synchronise_the_host_on_cuda(make_agent):
    agent = make_agent("cuda")
    agent.compile()
    batches = [on("cuda", agent_checks.random_batch(OBS, ACT, BATCH, seed=i)) for i in range(4)]
    for batch in batches:  # compiles both of SPOT's graphs
        agent.update(batch)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for batch in batches:
            agent.update(batch)
    finally:
        torch.cuda.set_sync_debug_mode("default")
