"""``offtune export``: a thin skin over :func:`offtune.finetune.export.export`."""

from __future__ import annotations

import click
from rich.table import Table

from offtune.cli.display import console
from offtune.finetune.export import FORMATS, ExportResult
from offtune.finetune.export import export as run_export
from offtune.finetune.runtime import SEED_RANGE
from offtune.policies.portable import PortableExport
from offtune.policies.sb3 import SB3_ALGOS


@click.command()
@click.argument("checkpoint", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="sb3", show_default=True)
@click.option("-o", "--out", type=click.Path(dir_okay=False), default=None,
              help="The file to write: the model zip (sb3), policy.onnx (onnx) or policy.pt (torchscript).")
@click.option("--sb3-algo", type=click.Choice(SB3_ALGOS), default=None,
              help="SB3 class (default: td3 for SPOT, sac for IQL and MISA).")
@click.option("--rl-zoo", type=click.Path(file_okay=False), default=None,
              help="Also write an rl-zoo3 experiment (zip, config.yml, env_kwargs.yml, evaluation) under DIR.")
@click.option("--eval-episodes", type=click.IntRange(min=1), default=None,
              help="Episodes of the evaluation stored with --rl-zoo (default: 100 on AntMaze, 10 elsewhere).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(*SEED_RANGE),
              help="Seed of that evaluation.")
def export(checkpoint, fmt, out, sb3_algo, rl_zoo, eval_episodes, seed) -> None:
    """Export CHECKPOINT as a Stable-Baselines3 zip that TD3.load / SAC.load open without offtune, or its
    policy as an ONNX or TorchScript file that onnxruntime / torch.jit.load run without offtune."""
    if fmt == "sb3" and out is None and rl_zoo is None:
        raise click.UsageError("give -o/--out FILE.zip, --rl-zoo DIR, or both")
    result = run_export(checkpoint, out, format=fmt, sb3_algo=sb3_algo, rl_zoo=rl_zoo, eval_episodes=eval_episodes,
                        seed=seed)
    if result.portable is not None:
        _print_portable(result.portable)
    else:
        _print_sb3(result)


def _print_portable(exported: PortableExport) -> None:
    keys = " + ".join(exported.obs_keys) if exported.obs_keys else "the env's observation"
    table = Table(title=f"{'ONNX' if exported.format == 'onnx' else 'TorchScript'} export", show_header=False)
    table.add_row("file", f"[bold]{exported.path}[/]")
    table.add_row("input", f"observation: float32 (batch, {exported.obs_dim}), raw: {keys} concatenated in this "
                           "order (the normaliser is inside)")
    table.add_row("output", f"action: float32 (batch, {exported.action_dim}) within the env's action bounds")
    table.add_row("run with", exported.run_hint())
    table.add_row("parity", f"max |file - offtune| action {exported.max_action_error:.1e}")
    console.print(table)


def _print_sb3(result: ExportResult) -> None:
    exported = result.sb3
    table = Table(title=f"SB3 {exported.sb3_class} export", show_header=False)
    table.add_row("zip", f"[bold]{exported.path}[/]")
    table.add_row("load with", f"stable_baselines3.{exported.sb3_class}.load('{exported.path}')")
    table.add_row("policy", f"{exported.policy} {exported.policy_kwargs}")
    table.add_row("critics", "exported" if exported.critics else "not exported (SB3's fresh critics)")
    table.add_row("rewards", exported.rewards())
    table.add_row("parity", f"max |SB3 - offtune| action {exported.max_action_error:.1e} of the half range")
    if result.rl_zoo is not None:
        zoo = result.rl_zoo
        table.add_row("rl-zoo3", str(zoo.run_dir))
        table.add_row("evaluation", f"return {zoo.evaluation['mean_reward']:.2f} ± {zoo.evaluation['std_reward']:.2f}"
                                    f" over {zoo.evaluation['n_eval_episodes']} episodes")
        table.add_row("play", zoo.enjoy_command())
    console.print(table)
    for note in exported.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
