"""``offtune pretrain``, ``offtune finetune`` and ``offtune evaluate``: thin skins over offtune.finetune."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import click
from click.core import ParameterSource
from rich.markup import escape

from offtune.cli.display import RichProgress, before_after_table, console, err_console, evaluations_table
from offtune.finetune import trainer
from offtune.finetune.evaluate import evaluate as run_evaluation
from offtune.finetune.online import MAX_ENVS
from offtune.finetune.runtime import SEED_RANGE
from offtune.finetune.scores import LOGGERS
from offtune.finetune.video import VIDEO_FORMATS, record_video, video_path
from offtune.policies.checkpoint import LoadedAgent, load_agent
from offtune.policies.config import parse_assignments
from offtune.policies.presets import DEFAULT_PROTOCOL, PROTOCOLS

DEVICE = click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
PRECISION = click.option(
    "--matmul-precision", type=click.Choice(trainer.MATMUL_PRECISIONS, case_sensitive=False), default=None,
    help="float32 matmuls: highest = full fp32 (torch's default); high = TF32 on CUDA; medium = bfloat16 on "
         "CUDA and on CPUs with AMX/AVX512-BF16 (faster, less precise). --resume keeps the run's unless given.",
)
COMPILE = click.option(
    "--compile", "compile_mode", type=click.Choice(trainer.COMPILE_MODES, case_sensitive=False), default=None,
    help=f"Run each update as one torch.compile'd graph: auto (default) = on when the phase has at least "
         f"{trainer.AUTO_COMPILE_UPDATES:,} updates; on; off = eager. --resume keeps the run's unless given.",
)
SEED_TYPE = click.IntRange(*SEED_RANGE)
SEED = click.option("--seed", default=0, show_default=True, type=SEED_TYPE)
SETS = click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override any config field.")
LOGGER = click.option("--logger", type=click.Choice(LOGGERS), default=None, help="Also send metrics there.")
CHECKPOINT_MINUTES = click.option(
    "--checkpoint-every-minutes", "checkpoint_minutes", type=click.FloatRange(min=0, min_open=True), default=None,
    help="Also write checkpoints/last.pt this often, between evaluations (default 10; --resume may change it).",
)


POSITIVE = click.IntRange(min=1)


def _refuse_with_resume(ctx: click.Context, names: tuple[str, ...]) -> None:
    """A resumed run keeps its own settings; an option it would ignore is a mistake to say, not to swallow."""
    given = [name for name in names if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE]
    if given:
        params = {param.name: param for param in ctx.command.params}
        options = ", ".join(params[name].opts[0] if isinstance(params[name], click.Option)
                            else params[name].human_readable_name for name in given)
        raise click.UsageError(f"--resume continues the run with its own settings; leave out {options}")


def _interrupted(error: trainer.Interrupted) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # more presses must not interrupt the exit itself
    err_console.print(f"{error}; continue with --resume {error.run_dir}", style="yellow", markup=False,
                      highlight=False, soft_wrap=True)
    sys.exit(130)


@click.command()
@click.argument("algo", required=False)
@click.argument("dataset", required=False)
@click.option("--steps", default=None, type=POSITIVE,
              help="Actor-critic updates (default: the protocol's; 1M, MISA offline 1.2M gym, 2M mazes).")
@click.option("--protocol", type=click.Choice(PROTOCOLS, case_sensitive=False), default=DEFAULT_PROTOCOL,
              show_default=True,
              help="finetune: the official fine-tuning scripts' pretraining (IQL keeps its lr constant); "
                   "offline: the official offline scripts (IQL's cosine lr decay, MISA's longer runs).")
@SEED
@DEVICE
@PRECISION
@COMPILE
@click.option("--batch-size", type=POSITIVE, default=None, help="Default: the algorithm's (256).")
@click.option("--eval-every", type=POSITIVE, default=None, help="Updates between evaluations (default 50k).")
@click.option("--eval-episodes", type=POSITIVE, default=None, help="Default: 100 on AntMaze, 10 elsewhere.")
@click.option("--task-mode", type=click.Choice(["d4rl", "goal"]), default=None,
              help="Maze task (default: d4rl on AntMaze, goal on PointMaze).")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="The run directory itself.")
@SETS
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None, help="YAML of settings.")
@LOGGER
@CHECKPOINT_MINUTES
@click.option("--resume", type=click.Path(file_okay=False), default=None, help="Continue an interrupted run.")
@click.option("--download", is_flag=True, help="Download the dataset if it is not local.")
@click.pass_context
def pretrain(ctx, algo, dataset, steps, protocol, seed, device, matmul_precision, compile_mode, batch_size, eval_every,
             eval_episodes, task_mode, out, sets, config_file, logger, checkpoint_minutes, resume, download) -> None:
    """Pretrain ALGO (iql, spot, misa) offline on DATASET (a D4RL name or a Minari id).

    `offtune pretrain --resume DIR` continues an interrupted run with its own settings (a run that stopped
    before its first checkpoint starts over).
    """
    if resume is None and (algo is None or dataset is None):
        raise click.UsageError("ALGO and DATASET are required unless --resume is given")
    if resume is not None:
        _refuse_with_resume(ctx, ("steps", "protocol", "seed", "batch_size", "eval_every", "eval_episodes",
                                  "task_mode", "out", "sets", "config_file"))
    try:
        with RichProgress() as progress:
            result = trainer.pretrain(
                algo, dataset, steps=steps, seed=seed, device=device, matmul_precision=matmul_precision,
                batch_size=batch_size,
                eval_every=eval_every, eval_episodes=eval_episodes, task_mode=task_mode, out=out,
                overrides=parse_assignments(sets), config_file=config_file, logger=logger, resume=resume,
                download=download, progress=progress, checkpoint_minutes=checkpoint_minutes, protocol=protocol,
                compile_mode=compile_mode,
            )
    except trainer.Interrupted as error:
        _interrupted(error)
    config = json.loads((result.run_dir / "config.json").read_text())
    console.print(evaluations_table(f"{config['run']['algo'].upper()} offline on {config['dataset']['name']}",
                                    result.evaluations, result.scores.get("rule", "")))
    console.print(f"checkpoint: [bold]{result.checkpoint}[/]")


@click.command()
@click.argument("checkpoint", type=click.Path(), required=False)
@click.option("--steps", default=1_000_000, show_default=True, type=POSITIVE, help="Online env steps.")
@click.option("--utd", default=1, show_default=True, type=POSITIVE, help="Updates per env step.")
@click.option("--num-envs", default=1, show_default=True, type=click.IntRange(1, MAX_ENVS),
              help="Envs stepped together.")
@click.option("--mix", type=click.Choice(["append", "ratio"]), default="append", show_default=True,
              help="append: one pool sampled uniformly (official); ratio: a fixed online share per batch.")
@click.option("--online-ratio", type=float, default=None, help="Online share of each batch (implies --mix ratio).")
@click.option("--buffer-size", type=POSITIVE, default=None,
              help="Online capacity (default: --steps, never overwrite).")
@click.option("--eval-every", type=POSITIVE, default=None, help="Env steps between evaluations (default 50k).")
@click.option("--eval-episodes", type=POSITIVE, default=None, help="Default: 100 on AntMaze, 10 elsewhere.")
@click.option("--seed", type=SEED_TYPE, default=None, help="Default: the seed CHECKPOINT was pretrained with.")
@DEVICE
@PRECISION
@COMPILE
@click.option("--out", type=click.Path(file_okay=False), default=None, help="The run directory itself.")
@SETS
@LOGGER
@CHECKPOINT_MINUTES
@click.option("--resume", type=click.Path(file_okay=False), default=None, help="Continue an interrupted run.")
@click.option("--download", is_flag=True, help="Download the dataset if it is not local.")
@click.option("--data", metavar="ID", default=None,
              help="Train on this logged Minari dataset instead of the live env: --steps updates with the online "
                   "schedules, the logged transitions added to the offline data (evaluation still uses the env).")
@click.option("--record-dataset", metavar="ID", default=None,
              help="At the end, write the online transitions as a new Minari dataset ID, declared like the "
                   "checkpoint's dataset (the env's own observations, actions, rewards and episode ends).")
@click.option("--video-every", type=POSITIVE, default=None, metavar="N",
              help="Record an evaluation episode as a video (run folder videos/step_N.mp4) before the first step, "
                   "then at the first evaluation at or past every N steps.")
@click.option("--video-max-steps", type=POSITIVE, default=None, help="With --video-every: cut videos after N steps.")
@click.pass_context
def finetune(ctx, checkpoint, steps, utd, num_envs, mix, online_ratio, buffer_size, eval_every, eval_episodes, seed,
             device, matmul_precision, compile_mode, out, sets, logger, checkpoint_minutes, resume, download, data,
             record_dataset, video_every, video_max_steps) -> None:
    """Fine-tune CHECKPOINT online in the live environment of its dataset, or on logged data (--data).

    `offtune finetune --resume DIR` continues an interrupted run with its own settings (a run that stopped
    before its first checkpoint starts over).
    """
    if checkpoint is None and resume is None:
        raise click.UsageError("CHECKPOINT is required unless --resume is given")
    if resume is not None:
        _refuse_with_resume(ctx, ("checkpoint", "steps", "utd", "num_envs", "mix", "online_ratio", "buffer_size",
                                  "eval_every", "eval_episodes", "seed", "out", "sets", "data", "record_dataset",
                                  "video_every", "video_max_steps"))
    if mix == "ratio" and online_ratio is None:
        online_ratio = 0.5
    if online_ratio is not None and not 0.0 <= online_ratio <= 1.0:
        raise click.BadParameter("must be between 0 and 1", param_hint="--online-ratio")
    try:
        with RichProgress() as progress:
            result = trainer.finetune(
                checkpoint, steps=steps, utd=utd, num_envs=num_envs, online_ratio=online_ratio,
                buffer_size=buffer_size, eval_every=eval_every, eval_episodes=eval_episodes, seed=seed,
                device=device, matmul_precision=matmul_precision, out=out, overrides=parse_assignments(sets),
                logger=logger, resume=resume, download=download, progress=progress,
                checkpoint_minutes=checkpoint_minutes, data=data, record_dataset=record_dataset,
                video_every=video_every, video_max_steps=video_max_steps, compile_mode=compile_mode,
            )
    except trainer.Interrupted as error:
        _interrupted(error)
    config = json.loads((result.run_dir / "config.json").read_text())
    run_settings = config["run"]
    title = "offline → online" if "data" not in run_settings else f"offline → logged data {run_settings['data']}"
    console.print(before_after_table(title, config["dataset"]["name"], run_settings["algo"], result.scores))
    if "record_dataset" in run_settings:
        console.print(f"online transitions: dataset [bold]{run_settings['record_dataset']}[/]")
    if "video_every" in run_settings:
        console.print(f"videos: {result.run_dir / 'videos'}", markup=False, highlight=False, soft_wrap=True)
    console.print(f"report: {result.run_dir / 'report.md'}\ncheckpoint: [bold]{result.checkpoint}[/]")


def _training_evaluation(loaded: LoadedAgent) -> tuple[int, int]:
    """The first seed and the episode count the checkpoint's run evaluated with, so that evaluating it again
    repeats the score in its scores.json (a checkpoint without a run record: seed 0 and the default count)."""
    run = loaded.checkpoint.get("run", {})
    episodes = run.get("eval_episodes") or trainer.default_eval_episodes(loaded.info)
    return run.get("seed", 0) + trainer.EVALUATION_SEED_OFFSET, episodes


@click.command()
@click.argument("checkpoint", type=click.Path())
@click.option("--episodes", default=None, type=POSITIVE,
              help="Default: as many as training evaluated with; 1 with --video.")
@click.option("--seed", type=SEED_TYPE, default=None,
              help="Seed of the first episode. Default: the one training evaluated with (the run's seed + 10000).")
@DEVICE
@click.option("--video", type=click.Path(dir_okay=False), default=None,
              help="Record the episodes, rendered offscreen, as a video file (.mp4 or .gif).")
@click.option("--format", "video_format", type=click.Choice(VIDEO_FORMATS), default=None,
              help="Video format. Default: the --video file's suffix, else mp4.")
@click.option("--max-steps", type=POSITIVE, default=None, help="With --video: cut each episode after N steps.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
def evaluate(checkpoint, episodes, seed, device, video, video_format, max_steps, as_json) -> None:
    """Evaluate CHECKPOINT deterministically on its dataset's evaluation env, with the seeds training used."""
    if video is None and (video_format is not None or max_steps is not None):
        raise click.UsageError("--format and --max-steps go with --video")
    if video is not None:
        video, video_format = video_path(video, video_format)
    loaded = load_agent(checkpoint, device)
    training_seed, training_episodes = _training_evaluation(loaded)
    seed = training_seed if seed is None else seed
    recording = None
    if video is None:
        result = run_evaluation(loaded.agent, loaded.info, loaded.normalizer, episodes or training_episodes, seed,
                                loaded.device)
    else:
        recording = record_video(loaded.agent, loaded.info, loaded.normalizer, video, episodes or 1, seed,
                                 loaded.device, video_format, max_steps)
        result = recording.evaluation
    summary = {"checkpoint": str(Path(loaded.path)), "dataset": loaded.info.name, "algo": loaded.algo,
               "rule": loaded.info.score_rule.describe(), "seed": seed, **result.summary(),
               "returns": result.returns}
    if recording is not None:
        summary["video"] = {"path": str(recording.path), "format": recording.fmt, "frames": recording.frames,
                            "width": recording.width, "height": recording.height, "fps": recording.fps,
                            "cut_episodes": recording.cut}
    if as_json:
        click.echo(json.dumps(summary))
        return
    phase = "evaluate" if recording is None else "video"
    entry = {"phase": phase, "step": loaded.step, **result.summary()}
    console.print(evaluations_table(f"{loaded.algo.upper()} on {loaded.info.name}", [entry], summary["rule"]))
    if recording is not None:
        cut = f"; {recording.cut} episode(s) cut at {max_steps} steps" if recording.cut else ""
        console.print(f"video: [bold]{escape(str(recording.path))}[/] ({recording.frames} frames of "
                      f"{recording.width}x{recording.height} at {recording.fps:g} fps{cut})", soft_wrap=True)
