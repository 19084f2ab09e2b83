"""Mutation check: every single-line mutation of the update code below must make a fast test fail.

Each mutation replaces one exact substring (found exactly once in its file) with another. The runner copies
the working tree (tracked and untracked files that git does not ignore) to a temporary directory, never
touching this checkout, checks that Python imports ``offtune`` from the copy, runs the mutations' test
files once on the unmutated copy (they must pass), then for each mutation: a fresh copy, the edit, and
its test files with ``pytest -x``. A mutation *survives* when its tests still pass; the script exits 1 if
any survives, 2 if a mutation no longer matches the code or its tests error out.

    python benchmarks/mutations.py              # all mutations
    python benchmarks/mutations.py --only misa  # those whose name contains "misa"
    python benchmarks/mutations.py --list
"""

from __future__ import annotations

import argparse
import ast
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 600


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str
    original: str
    replacement: str
    tests: tuple[str, ...]


IQL = "offtune/policies/iql.py"
SPOT = "offtune/policies/spot.py"
MISA = "offtune/policies/misa.py"
HMC = "offtune/policies/hmc.py"
TRANSFORMS = "offtune/buffers/transforms.py"
ANT = "offtune/buffers/ant_controller.py"
ANT_TRAINING = "offtune/buffers/ant_training.py"
STEPS = "offtune/policies/steps.py"
IQL_TESTS = ("tests/test_iql.py",)
MISA_TESTS = ("tests/test_misa.py",)
HMC_TESTS = ("tests/test_hmc.py",)
SPOT_TESTS = ("tests/test_spot_by_hand.py", "tests/test_spot.py")
TRANSFORM_TESTS = ("tests/test_transforms.py",)
ANT_TESTS = ("tests/test_antmaze.py::test_ant_reads_the_phase_from_its_legs",
             "tests/test_antmaze.py::test_shipped_ant_walks_to_a_goal_in_a_real_antmaze_env")
PHASE_LEAD_TESTS = (
    "tests/test_antmaze.py::test_phase_lead_is_picked_by_reach_rate_then_steps_and_changes_nothing_else",
)
# The compiled update's Adam, against torch's on eps-sized gradients too (the whole-update equivalence test
# compiles for a minute; this one runs the same math eagerly in a second).
STEPS_TESTS = ("tests/test_compiled_update.py::test_compiled_adam_step_is_torch_adam",)


def iql(name: str, original: str, replacement: str) -> Mutation:
    return Mutation(f"iql: {name}", IQL, original, replacement, IQL_TESTS)


def spot(name: str, original: str, replacement: str) -> Mutation:
    return Mutation(f"spot: {name}", SPOT, original, replacement, SPOT_TESTS)


def misa(name: str, original: str, replacement: str) -> Mutation:
    return Mutation(f"misa: {name}", MISA, original, replacement, MISA_TESTS)


def hmc(name: str, original: str, replacement: str) -> Mutation:
    return Mutation(f"hmc: {name}", HMC, original, replacement, HMC_TESTS)


def steps(name: str, original: str, replacement: str) -> Mutation:
    return Mutation(f"compiled adam: {name}", STEPS, original, replacement, STEPS_TESTS)


def ant(name: str, original: str, replacement: str) -> Mutation:
    return Mutation(f"ant: {name}", ANT, original, replacement, ANT_TESTS)


def phase_lead(name: str, original: str, replacement: str) -> Mutation:
    return Mutation(f"ant search: {name}", ANT_TRAINING, original, replacement, PHASE_LEAD_TESTS)


def transform(name: str, original: str, replacement: str) -> Mutation:
    return Mutation(f"transforms: {name}", TRANSFORMS, original, replacement, TRANSFORM_TESTS)


MUTATIONS: tuple[Mutation, ...] = (
    # IQL: which critic feeds which loss, the update order, signs and weights.
    iql("value loss reads the online critic",
        "target_q = self.target_critic(observations, actions)", "target_q = self.critic(observations, actions)"),
    iql("max instead of min over the target critics",
        "target_q = self.target_critic(observations, actions).min(dim=0)",
        "target_q = self.target_critic(observations, actions).max(dim=0)"),
    iql("value residual sign flipped", "expectile_loss(target_q - values,", "expectile_loss(values - target_q,"),
    iql("expectile τ ↔ 1 - τ",
        "torch.where(diff > 0, expectile, 1.0 - expectile)", "torch.where(diff > 0, 1.0 - expectile, expectile)"),
    iql("actor weights from the V before its step",
        "advantage = target_q - updated_values", "advantage = target_q - values_before_step"),
    iql("actor weights from the online critic",
        "advantage = target_q - updated_values",
        "advantage = self.critic(observations, actions).min(dim=0).values - updated_values"),
    iql("advantage sign flipped", "advantage = target_q - updated_values", "advantage = updated_values - target_q"),
    iql("β divides instead of multiplying", "torch.exp(beta * advantage)", "torch.exp(advantage / beta)"),
    iql("advantage weights not clipped", "torch.exp(beta * advantage).clamp(max=max_weight)",
        "torch.exp(beta * advantage)"),
    iql("actor loss sign flipped", "return -(weights * policy_log_prob(", "return (weights * policy_log_prob("),
    iql("no value step before the actor and critic",
        "value_loss, values_before_step = descend(self.value_optimizer, self.value, value_loss_of)",
        "value_loss, values_before_step = value_loss_of(self.value)"),
    iql("discount applied to terminal transitions",
        "rewards + discount * (1.0 - dones) * next_values", "rewards + discount * next_values"),
    iql("critic target from V(s) instead of V(s')",
        "critic_target(rewards, dones, next_values,", "critic_target(rewards, dones, updated_values,"),
    iql("one critic's loss dropped", "(q - targets).square().sum(dim=0).mean()", "(q - targets).square()[0].mean()"),
    iql("polyak rate 1 - τ", "soft_update(self.target_critic, self.critic, config.target_update_rate)",
        "soft_update(self.target_critic, self.critic, 1.0 - config.target_update_rate)"),
    iql("log σ not clipped", "std = self.log_std.clamp(self.log_std_min, self.log_std_max).exp()",
        "std = self.log_std.exp()"),
    # SPOT: the TD3 target, the normalised actor loss with its support penalty, the target updates.
    spot("TD target from the online critic", "next_q = self.target_critic(next_observations, next_actions)",
         "next_q = self.critic(next_observations, next_actions)"),
    spot("TD target from the online actor", "target_actions(self.target_actor(next_observations)",
         "target_actions(self.actor(next_observations)"),
    spot("max instead of min over the target critics",
         "self.target_critic(next_observations, next_actions).min(dim=0)",
         "self.target_critic(next_observations, next_actions).max(dim=0)"),
    spot("discount applied to terminal transitions",
         "rewards + self.discount * (1.0 - dones) * next_q", "rewards + self.discount * next_q"),
    spot("target-policy noise not clipped", ".clamp(-noise_clip, noise_clip)", ""),
    spot("actor reads Q₂", "q_pi = self.critic.member(0, observations, pi)",
         "q_pi = self.critic.member(1, observations, pi)"),
    spot("Q term sign flipped", "q_term = -q_pi.mean()", "q_term = q_pi.mean()"),
    spot("Q normalisation dropped", "q_term = q_term / q_pi.abs().mean().detach()", "q_term = q_term"),
    spot("Q normaliser not detached", "q_term = q_term / q_pi.abs().mean().detach()",
         "q_term = q_term / q_pi.abs().mean()"),
    spot("λ·neg_log_beta dropped", "return q_term + lam * neg_log_beta.mean()", "return q_term"),
    spot("KL dropped from neg_log_beta",
         "return reconstruction_error + kl_weight * kl_to_standard_normal(mean, log_std).mean(-1)",
         "return reconstruction_error"),
    spot("polyak rate 1 - τ on the target critic",
         "soft_update(self.target_critic, self.critic, config.target_update_rate)",
         "soft_update(self.target_critic, self.critic, 1.0 - config.target_update_rate)"),
    spot("target actor not updated", "soft_update(self.target_actor, self.actor, config.target_update_rate)",
         "pass"),
    # MISA: the TD target, the MI critic penalty, the policy's terms, the HMC term and its chains.
    misa("TD target from the online critic",
         "next_q = self.target_critic(next_observations, next_actions)",
         "next_q = self.critic(next_observations, next_actions)"),
    misa("max instead of min over the target critics",
         "self.target_critic(next_observations, next_actions).min(0)",
         "self.target_critic(next_observations, next_actions).max(0)"),
    misa("discount applied to terminal transitions",
         "batch.rewards + cfg.discount * (1.0 - batch.dones) * next_q", "batch.rewards + cfg.discount * next_q"),
    misa("next action from the current state",
         "next_actions = torch.tanh(next_mean + next_log_std.exp()",
         "next_actions = torch.tanh(mean.detach() + log_std.detach().exp()"),
    misa("γ₁ penalty dropped", "critic_penalty = self._min_q_weight_now * penalty", "critic_penalty = 0.0 * penalty"),
    misa("log-partition samples from the next state",
         "sampled = torch.tanh(mean.unsqueeze(1) + log_std.exp().unsqueeze(1) * noise)",
         "sampled = torch.tanh(next_mean.unsqueeze(1) + next_log_std.exp().unsqueeze(1) * noise)"),
    misa("log-sum-exp replaced by a mean",
         "temperature * torch.logsumexp(candidates / temperature, dim=-1)",
         "temperature * (candidates / temperature).mean(-1)"),
    misa("log(batch size) shift dropped", "shift = math.log(batch_size) if log_k_norm else 0.0", "shift = 0.0"),
    misa("dataset-action Q dropped from the penalty", "gap = log_partition - q_data", "gap = log_partition"),
    misa("DV: log B dropped", "return torch.logsumexp(gap, dim=-1) - math.log(batch_size)",
         "return torch.logsumexp(gap, dim=-1)"),
    misa("NWJ: e^-1 dropped", "return torch.exp(gap - 1.0).mean(-1)", "return torch.exp(gap).mean(-1)"),
    misa("TD error summed over the batch", "td_loss = (q_data - td_target).square().mean(-1)",
         "td_loss = (q_data - td_target).square().sum(-1)"),
    misa("γ₂ data log-likelihood dropped", "bc_loss = (alpha * log_pi - log_prob_data).mean()",
         "bc_loss = (alpha * log_pi).mean()"),
    misa("entropy term dropped", "bc_loss = (alpha * log_pi - log_prob_data).mean()",
         "bc_loss = (-log_prob_data).mean()"),
    misa("γ₂ not applied", "policy_loss = self._bc_weight_now * bc_loss - frozen_q(",
         "policy_loss = bc_loss - frozen_q("),
    misa("policy Q term sign flipped", "bc_loss - frozen_q(new_actions).min(0).values.mean()",
         "bc_loss + frozen_q(new_actions).min(0).values.mean()"),
    misa("policy Q term max over critics", "frozen_q(new_actions).min(0)", "frozen_q(new_actions).max(0)"),
    misa("α not exponentiated", "alpha = log_alpha.detach().exp() * cfg.alpha_multiplier",
         "alpha = log_alpha.detach() * cfg.alpha_multiplier"),
    misa("α loss sign flipped", "return -(log_alpha * (log_pi.detach() + target_entropy).mean())",
         "return log_alpha * (log_pi.detach() + target_entropy).mean()"),
    misa("target entropy +|A|", "self.target_entropy = -float(action_dim)", "self.target_entropy = float(action_dim)"),
    misa("HMC term +0.1 → -7.0", "policy_loss = policy_loss + cfg.unbiased_weight * log_pi_improved.mean()",
         "policy_loss = policy_loss - 7.0 * log_pi_improved.mean()"),
    misa("HMC term dropped", "policy_loss = policy_loss + cfg.unbiased_weight * log_pi_improved.mean()",
         "policy_loss = policy_loss"),
    misa("HMC term without gradient to μ",
         "log_pi_improved = tanh_gaussian_log_prob(torch.atanh(chains.samples), mean, log_std)",
         "log_pi_improved = tanh_gaussian_log_prob(torch.atanh(chains.samples), mean.detach(), log_std)"),
    misa("HMC chains start at the policy's actions", "self._improved_policy_samples(batch.observations, actions)",
         "self._improved_policy_samples(batch.observations, self.explore(batch.observations))"),
    misa("HMC target without the tanh Jacobian", "log_pi = (-0.5 * z.square() - torch.log1p(-safe.square())).sum(-1)",
         "log_pi = (-0.5 * z.square()).sum(-1)"),
    misa("HMC target without exp(Q)", "return torch.where(inside, log_pi + q,", "return torch.where(inside, log_pi,"),
    misa("HMC target with max over critics", "q = q_at_states(safe).min(0)", "q = q_at_states(safe).max(0)"),
    misa("HMC adapts over the whole burn-in", "return int(config.hmc_burnin_steps * 0.8)",
         "return config.hmc_burnin_steps"),
    misa("HMC leapfrog count from the burn-in", "num_leapfrog_steps=cfg.hmc_leapfrog_steps",
         "num_leapfrog_steps=cfg.hmc_burnin_steps"),
    misa("dataset actions not clipped",
         "actions = batch.actions.clamp(-cfg.dataset_action_clip, cfg.dataset_action_clip)",
         "actions = batch.actions"),
    misa("polyak rate 1 - τ", "soft_update(self.target_critic, self.critic, cfg.target_update_rate)",
         "soft_update(self.target_critic, self.critic, 1.0 - cfg.target_update_rate)"),
    misa("Lagrange gap sign flipped", "alpha_prime.detach() * min_q_weight * (penalty - target_gap)",
         "alpha_prime.detach() * min_q_weight * (penalty + target_gap)"),
    misa("acceptance metric from the step size", "hmc_acceptance=chains.accept_rate",
         "hmc_acceptance=chains.step_size"),
    # HMC: each term of the leapfrog integrator, the Metropolis test, the chain bookkeeping.
    hmc("first momentum half-step made whole", "momentum = momentum + 0.5 * step_size * grad",
        "momentum = momentum + step_size * grad"),
    hmc("last momentum half-step made whole", "momentum_step = step_size if index < num_steps - 1 else 0.5 * step_size",
        "momentum_step = step_size"),
    hmc("drift uses half the step", "states = states + step_size * momentum",
        "states = states + 0.5 * step_size * momentum"),
    hmc("non-finite trajectory accepted", "finite = finite & torch.isfinite(log_prob)", "finite = finite"),
    hmc("kinetic energy without ½", "current_energy = -log_prob + 0.5 * momentum.square().sum(-1)",
        "current_energy = -log_prob + momentum.square().sum(-1)"),
    hmc("Metropolis ratio sign flipped", "ratio = current_energy - proposed_energy",
        "ratio = proposed_energy - current_energy"),
    hmc("acceptance test inverted", "accept = torch.rand_like(log_ratio).log() < log_ratio",
        "accept = torch.rand_like(log_ratio).log() > log_ratio"),
    hmc("rejected proposals kept", "states = torch.where(accept.unsqueeze(-1), proposal, states)",
        "states = proposal"),
    hmc("log density not carried with the state", "log_prob = torch.where(accept, proposal_log_prob, log_prob)",
        "log_prob = log_prob"),
    hmc("gradient not carried with the state", "grad = torch.where(accept.unsqueeze(-1), proposal_grad, grad)",
        "grad = grad"),
    hmc("step size adaptation inverted", "grow = mean_accept_prob.log() > math.log(target_accept_prob)",
        "grow = mean_accept_prob.log() < math.log(target_accept_prob)"),
    hmc("burn-in steps kept as samples", "if index >= num_burnin_steps:", "if index < num_results:"),
    hmc("acceptance counted over rejected proposals", "grad, step), accept.to(states.dtype).mean()",
        "grad, step), (~accept).to(states.dtype).mean()"),
    # Reward transforms: every map the official codes apply.
    steps("first moment without bias correction", "step_size = (lr / (1.0 - beta1**step)).to(param.dtype)",
          "step_size = torch.as_tensor(lr, dtype=param.dtype)"),
    steps("second moment without bias correction", "bias_correction2_sqrt = (1.0 - beta2**step).sqrt().to(param.dtype)",
          "bias_correction2_sqrt = torch.ones((), dtype=param.dtype)"),
    steps("bias corrections in float32", 'step = state["step"].to(torch.float64)', 'step = state["step"]'),
    steps("ε inside the square root", 'denominator = exp_avg_sq.sqrt() / bias_correction2_sqrt + group["eps"]',
          'denominator = (exp_avg_sq / bias_correction2_sqrt**2 + group["eps"]).sqrt()'),
    steps("β₁ and β₂ swapped", 'beta1, beta2 = group["betas"]', 'beta2, beta1 = group["betas"]'),
    transform("AntMaze r - 1 → r + 1", 'RewardTransform(1.0, -1.0, "antmaze_minus_one")',
              'RewardTransform(1.0, 1.0, "antmaze_minus_one")'),
    transform("MISA AntMaze 4(r - 0.5) → 4r - 0.5", 'RewardTransform(4.0, -2.0, "antmaze_misa")',
              'RewardTransform(4.0, -0.5, "antmaze_misa")'),
    transform("locomotion scale inverted", 'RewardTransform(1000.0 / spread, 0.0, "locomotion_return_scale")',
              'RewardTransform(spread / 1000.0, 0.0, "locomotion_return_scale")'),
    transform("min-max onto [0, 1]", 'RewardTransform(2.0 / spread, -2.0 * low / spread - 1.0, "minmax_unit")',
              'RewardTransform(1.0 / spread, -1.0 * low / spread, "minmax_unit")'),
    transform("min-max shift dropped", 'RewardTransform(2.0 / spread, -2.0 * low / spread - 1.0, "minmax_unit")',
              'RewardTransform(2.0 / spread, -1.0, "minmax_unit")'),
    transform("composition drops the first shift's scaling", "self.shift * other.scale + other.shift",
              "self.shift + other.shift"),
    transform("normaliser without eps", "(observations - self.mean) / (self.std + self.eps)",
              "(observations - self.mean) / self.std"),
    ant("phase fit: velocity term's sign", "sine @ angle - cosine @ velocity", "sine @ angle + cosine @ velocity"),
    ant("phase fit without velocities", "cosine @ angle + sine @ velocity", "cosine @ angle"),
    ant("velocity scale per step, not per second", "1.0 / (2.0 * math.pi * float(values[\"frequency\"][0]))",
        "1.0 / (2.0 * math.pi * float(values[\"frequency\"][0]) * 0.05)"),
    ant("ankle sine and cosine swapped", "sine[1::2] = ANKLE_SIGN * (self.ankle_amplitude * np.cos(",
        "sine[1::2] = ANKLE_SIGN * (self.ankle_amplitude * np.sin("),
    ant("no phase lead", "phase = self._phase_of_legs(ant_observation, offset, sine, cosine) + self.phase_lead",
        "phase = self._phase_of_legs(ant_observation, offset, sine, cosine)"),
    phase_lead("fewest goals reached wins", "key=lambda lead: (reports[lead].rate,",
               "key=lambda lead: (-reports[lead].rate,"),
    phase_lead("slowest wins a tie", "-(reports[lead].median_steps or math.inf)",
               "(reports[lead].median_steps or 0.0)"),
    phase_lead("the lead is not set", "unit[SEARCHED:] = (lead - parameter.low) / (parameter.high - parameter.low)",
               "unit[SEARCHED:] = unit[SEARCHED:]"),
)


def apply(mutation: Mutation, root: Path) -> None:
    """Edit ``root / mutation.file``; the original must occur exactly once and the result must parse."""
    path = root / mutation.file
    text = path.read_text()
    count = text.count(mutation.original)
    if count != 1:
        raise ValueError(f"{mutation.name}: {mutation.original!r} occurs {count} times in {mutation.file}")
    mutated = text.replace(mutation.original, mutation.replacement)
    ast.parse(mutated, filename=str(path))
    path.write_text(mutated)


def check_list(root: Path = ROOT) -> list[str]:
    """Problems with the mutation list against the code under ``root``: stale or ambiguous originals,
    replacements that do not parse, names used twice."""
    problems = []
    names = [m.name for m in MUTATIONS]
    problems += [f"duplicate name {name!r}" for name in sorted({n for n in names if names.count(n) > 1})]
    for mutation in MUTATIONS:
        text = (root / mutation.file).read_text()
        count = text.count(mutation.original)
        if count != 1:
            problems.append(f"{mutation.name}: {mutation.original!r} occurs {count} times in {mutation.file}")
            continue
        if "\n" in mutation.replacement or mutation.replacement == mutation.original:
            problems.append(f"{mutation.name}: the replacement must be a different single line")
            continue
        try:
            ast.parse(text.replace(mutation.original, mutation.replacement))
        except SyntaxError as error:
            problems.append(f"{mutation.name}: the mutated file does not parse ({error.msg})")
        problems += [f"{mutation.name}: no test file {test}" for test in mutation.tests
                     if not (root / test.split("::")[0]).exists()]
    return problems


def copy_tree(source: Path, destination: Path) -> None:
    """The files git tracks or would track (ignored ones such as .venv and runs/ left out)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=source, check=True, capture_output=True,
    ).stdout.decode().split("\0")
    for name in filter(None, listed):
        path = source / name
        if path.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)


def environment(root: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(root), "PYTHONDONTWRITEBYTECODE": "1"}


def check_import(root: Path) -> None:
    """Fail unless ``import offtune`` in ``root`` resolves to the copy (not the editable install)."""
    found = subprocess.run(
        [sys.executable, "-c", "import offtune; print(offtune.__file__)"],
        cwd=root, env=environment(root), check=True, capture_output=True, text=True,
    ).stdout.strip()
    if not Path(found).resolve().is_relative_to(root.resolve()):
        raise RuntimeError(f"the copy imports offtune from {found}, not from {root}")


def run_tests(root: Path, tests: tuple[str, ...]) -> tuple[int, str]:
    """pytest's exit code (0 passed, 1 failed; 124 for a timeout) and the tail of its output."""
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    try:
        done = subprocess.run(command, cwd=root, env=environment(root), capture_output=True, text=True,
                              timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return 124, "timed out"
    return done.returncode, (done.stdout + done.stderr)[-2000:]


def run_mutation(mutation: Mutation, pristine: Path, scratch: Path) -> tuple[str, str]:
    """("killed" | "survived" | "error", detail) for one mutation, in its own copy of ``pristine``."""
    root = Path(tempfile.mkdtemp(dir=scratch))
    try:
        shutil.copytree(pristine, root, dirs_exist_ok=True)
        apply(mutation, root)
        code, output = run_tests(root, mutation.tests)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if code in (1, 124):
        failed = [line for line in output.splitlines() if line.startswith(("FAILED", "ERROR"))]
        return "killed", failed[0] if failed else output.splitlines()[-1]
    if code == 0:
        return "survived", ""
    return "error", output


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="run the mutations whose name contains this text")
    parser.add_argument("--jobs", type=int, default=1, help="mutations tested at once")
    parser.add_argument("--list", action="store_true", help="print the mutations and exit")
    args = parser.parse_args()
    selected = [m for m in MUTATIONS if args.only in m.name]
    if args.list:
        for mutation in selected:
            print(f"{mutation.name}\n    {mutation.file}: {mutation.original!r} -> {mutation.replacement!r}")
        return 0
    problems = check_list()
    if problems:
        print("The mutation list does not match the code:", *problems, sep="\n  ")
        return 2

    with tempfile.TemporaryDirectory(prefix="offtune-mutations-") as scratch_name:
        scratch = Path(scratch_name)
        pristine = scratch / "pristine"
        copy_tree(ROOT, pristine)
        check_import(pristine)
        tests = tuple(sorted({test for m in selected for test in m.tests}))
        code, output = run_tests(pristine, tests)
        if code != 0:
            print(f"The tests fail before any mutation:\n{output}")
            return 2
        print(f"{len(selected)} mutations, tests pass unmutated; offtune imported from the copy")
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=max(args.jobs, 1)) as pool:
            outcomes = pool.map(lambda m: (m, *run_mutation(m, pristine, scratch)), selected)
            results = []
            for mutation, status, detail in outcomes:
                results.append(status)
                print(f"{status:8s} {mutation.name}" + (f"  [{detail}]" if status == "killed" else ""), flush=True)
                if status == "error":
                    print(detail)
    survivors = results.count("survived")
    errors = results.count("error")
    print(f"{len(results)} mutations: {results.count('killed')} killed, {survivors} survived, {errors} errors "
          f"({time.perf_counter() - started:.0f} s)")
    if errors:
        return 2
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
