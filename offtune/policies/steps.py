"""One gradient step that runs the same in eager PyTorch and inside a ``torch.compile``'d update.

Every algorithm writes its update as a sequence of ``descend(optimizer, network, loss_of)`` calls, like
the official JAX code's ``grad(loss_fn)(params)`` followed by an optax step. Eagerly, ``descend`` is the
usual autograd + ``torch.optim.Adam`` step. While ``torch.compile`` traces an update, ``descend`` takes
the gradient with ``torch.func.grad_and_value`` and applies Adam as plain tensor math on the optimizer's
own state, so forward, backward, optimiser steps and target updates become one graph (Dynamo cannot
trace ``Tensor.backward`` or ``Optimizer.zero_grad``). Both branches read and write the same parameters
and ``optimizer.state``, so checkpoints do not depend on which one ran.

Values that change between updates (a learning-rate schedule, SPOT's λ) must reach a compiled update as
0-d tensors, not Python floats: Dynamo would recompile for every new float.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
from torch import nn

from offtune.errors import OfftuneError

Aux = TypeVar("Aux")
LossOf = Callable[[Callable[..., Any]], tuple[torch.Tensor, Aux]]
"""Maps the network (a callable with its forward's signature) to (loss, aux): aux is what else the caller
wants back, tensors only (a tensor, or a possibly empty dict or tuple of them)."""


def descend(
    optimizers: torch.optim.Optimizer | Sequence[torch.optim.Optimizer],
    network: nn.Module,
    loss_of: LossOf,
    lr: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Aux]:
    """One step of each optimizer down ``loss_of(network)``; returns (detached loss, aux).

    Only the gradient of the parameters of ``network`` that the optimizers hold is computed: other
    parameters, and other networks the loss reads, are constants here. Several optimizers share one loss
    when its terms each reach only their own optimizer's parameters (MISA's policy and α). ``lr`` (a 0-d
    tensor) overrides the first optimizer's learning rate in the compiled branch, for schedules; eagerly the
    caller sets ``param_groups`` as usual.
    """
    optimizers = [optimizers] if isinstance(optimizers, torch.optim.Optimizer) else list(optimizers)
    owned = [[param for group in optimizer.param_groups for param in group["params"]] for optimizer in optimizers]
    owned_ids = {id(param) for params in owned for param in params}
    names, params = zip(*((n, p) for n, p in network.named_parameters() if id(p) in owned_ids), strict=True)
    if len(params) != len(owned_ids):
        raise ValueError("every parameter the optimizers hold must be a parameter of the network")
    if torch.compiler.is_compiling():
        def loss_of_params(values: dict[str, torch.Tensor]) -> tuple[torch.Tensor, tuple[torch.Tensor, Aux]]:
            loss, aux = loss_of(lambda *inputs: torch.func.functional_call(network, values, inputs))
            return loss, (loss, aux)

        grads, (loss, aux) = torch.func.grad(loss_of_params, has_aux=True)(dict(zip(names, params, strict=True)))
        by_id = {id(param): grads[name] for name, param in zip(names, params, strict=True)}
        for index, (optimizer, optimizer_params) in enumerate(zip(optimizers, owned, strict=True)):
            adam_step(optimizer, optimizer_params, [by_id[id(p)] for p in optimizer_params], lr if index == 0 else None)
    else:
        loss, aux = loss_of(network)
        grads = torch.autograd.grad(loss, params)
        for param, grad in zip(params, grads, strict=True):
            param.grad = grad
        for optimizer in optimizers:
            optimizer.step()
    return loss.detach(), aux


@torch.no_grad()
def adam_step(
    optimizer: torch.optim.Optimizer, params: list[torch.Tensor], grads: list[torch.Tensor], lr: torch.Tensor | None
) -> None:
    """``torch.optim.Adam``'s update (no weight decay, no AMSGrad) on its own state tensors, as tensor math."""
    group = optimizer.param_groups[0]
    beta1, beta2 = group["betas"]
    lr = group["lr"] if lr is None else lr
    for param, grad in zip(params, grads, strict=True):
        state = optimizer.state[param]
        state["step"].add_(1.0)
        # Flat views: Dynamo drops in-place updates of 0-d float64 CPU tensors (torch 2.13), which MISA's scalar
        # parameters (log α, the log σ scale) and their Adam moments are in the float64 equivalence test.
        exp_avg, exp_avg_sq, flat_grad = state["exp_avg"].view(-1), state["exp_avg_sq"].view(-1), grad.reshape(-1)
        exp_avg.lerp_(flat_grad, 1.0 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(flat_grad, flat_grad, value=1.0 - beta2)
        step = state["step"].to(torch.float64)  # 1 - 0.999^t loses 5 digits in float32
        step_size = (lr / (1.0 - beta1**step)).to(param.dtype)
        bias_correction2_sqrt = (1.0 - beta2**step).sqrt().to(param.dtype)
        denominator = exp_avg_sq.sqrt() / bias_correction2_sqrt + group["eps"]
        param.view(-1).sub_(step_size * exp_avg / denominator)


def init_adam_state(optimizer: torch.optim.Optimizer) -> None:
    """Create Adam's state as ``torch.optim.Adam`` would at its first step, so a compiled update finds it.

    Only parameters without state get one; a state loaded from a checkpoint is kept.
    """
    group = optimizer.param_groups[0]
    if group["weight_decay"] or group["amsgrad"] or group["maximize"] or len(optimizer.param_groups) != 1:
        raise ValueError("the compiled Adam step covers one parameter group without weight decay or AMSGrad")
    for param in group["params"]:
        state = optimizer.state[param]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32, device=param.device)
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        elif state["step"].device != param.device:  # Adam keeps a non-fused step on the CPU
            state["step"] = state["step"].to(param.device)


class CompiledUpdate:
    """An update step under ``torch.compile`` (one graph: ``fullgraph``), timing the calls that compile it.

    A call compiles when it is the first with its non-tensor arguments (SPOT's critic-only and actor steps are
    two graphs; functions passed in, such as an HMC target density, are traced into the graph and do not count
    as new variants); ``compile_seconds`` sums those calls. If compiling fails (no C++ compiler, an unsupported
    device), the step runs eagerly from then on when ``eager_fallback``, with a warning; otherwise the error
    says to turn compiling off. Compiling fails before the graph runs, so the eager rerun does the update once.
    CUDA graphs are left off: they are not tested here.
    """

    def __init__(self, step: Callable[..., Any]) -> None:
        self.eager = step
        self.step = torch.compile(step, fullgraph=True)
        self.compile_seconds = 0.0
        self.compiled_variants: set[tuple[Any, ...]] = set()
        self.eager_fallback = True

    def __call__(self, *args: Any) -> Any:
        variant = tuple(arg for arg in args if not isinstance(arg, (torch.Tensor, tuple)) and not callable(arg))
        if variant in self.compiled_variants:
            return self.step(*args)
        started = time.perf_counter()
        try:
            result = self.step(*args)
        except Exception as error:  # noqa: BLE001 - whatever stops the compiler, the eager step can still run
            reason = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
            if not self.eager_fallback:
                raise OfftuneError(f"compiling the update failed ({reason[:200]}); use --compile off") from error
            warnings.warn(f"compiling the update failed ({reason[:200]}); running it eagerly", stacklevel=2)
            self.step = self.eager
            result = self.eager(*args)
        self.compile_seconds += time.perf_counter() - started
        self.compiled_variants.add(variant)
        return result


class CompiledSteps:
    """An agent's several compiled steps (MISA: its update and one HMC transition) seen as one ``CompiledUpdate``."""

    def __init__(self, *steps: CompiledUpdate) -> None:
        self.steps = steps

    @property
    def compile_seconds(self) -> float:
        return sum(step.compile_seconds for step in self.steps)

    @property
    def eager_fallback(self) -> bool:
        return all(step.eager_fallback for step in self.steps)

    @eager_fallback.setter
    def eager_fallback(self, value: bool) -> None:
        for step in self.steps:
            step.eager_fallback = value
