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
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn

from offtune.errors import OfftuneError

Aux = TypeVar("Aux")
LossOf = Callable[[Callable[..., Any]], tuple[torch.Tensor, Aux]]
"""Maps the network (a callable with its forward's signature) to (loss, aux): aux is what else the caller
wants back, tensors only (a tensor, or a possibly empty dict or tuple of them)."""


def descend(
    optimizer: torch.optim.Optimizer,
    network: nn.Module,
    loss_of: LossOf,
    lr: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Aux]:
    """One optimiser step on ``network``'s parameters down ``loss_of(network)``; returns (detached loss, aux).

    Only ``network``'s gradient is computed: other networks the loss reads are constants here. ``lr`` (a
    0-d tensor) overrides the optimizer's learning rate in the compiled branch, for schedules; eagerly the
    caller sets ``param_groups`` as usual.
    """
    names, params = zip(*network.named_parameters(), strict=True)
    if torch.compiler.is_compiling():
        def loss_of_params(values: dict[str, torch.Tensor]) -> tuple[torch.Tensor, tuple[torch.Tensor, Aux]]:
            loss, aux = loss_of(lambda *inputs: torch.func.functional_call(network, values, inputs))
            return loss, (loss, aux)

        grads, (loss, aux) = torch.func.grad(loss_of_params, has_aux=True)(dict(zip(names, params, strict=True)))
        adam_step(optimizer, list(params), [grads[name] for name in names], lr)
    else:
        loss, aux = loss_of(network)
        grads = torch.autograd.grad(loss, params)
        for param, grad in zip(params, grads, strict=True):
            param.grad = grad
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
        state["exp_avg"].lerp_(grad, 1.0 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        step = state["step"].to(torch.float64)  # 1 - 0.999^t loses 5 digits in float32
        step_size = (lr / (1.0 - beta1**step)).to(param.dtype)
        bias_correction2_sqrt = (1.0 - beta2**step).sqrt().to(param.dtype)
        denominator = state["exp_avg_sq"].sqrt() / bias_correction2_sqrt + group["eps"]
        param.sub_(step_size * state["exp_avg"] / denominator)


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
    two graphs); ``compile_seconds`` sums those calls. If compiling fails (no C++ compiler, an unsupported
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
        variant = tuple(arg for arg in args if not isinstance(arg, (torch.Tensor, tuple)))
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
