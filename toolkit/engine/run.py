"""A training run from start to exit code (toolkit/training.py composes it with what the engine
does not know of, transfer learning; tools/train.py and tools/resume.py call that).

run() sets up the process group (torchrun or one process), logging and the stop handler, trains, and
returns the process exit code: 0 done, 130 stopped by Ctrl-C/SIGTERM (a checkpoint was written),
2 a user error (one line, no traceback).
"""
import functools
import os
import shlex
import sys

import click
import torch

from toolkit import mxlog
from toolkit.data.workers import end_workers, stalled
from toolkit.engine import branches, checkpoint, determinism, dist, preflight, status
from toolkit.engine.config import TrainConfig, from_dict, override
from toolkit.engine.logs import setup_logging
from toolkit.engine.model import ModelHook
from toolkit.engine.preflight import ReportedElsewhere
from toolkit.engine.signals import StopRequest
from toolkit.engine.trainer import Trainer
from toolkit.errors import Stalled, UserError, at_hard_exit, forget_hard_exit, hard_exit

TOY = "data/toy"


def ensure_data(cfg: TrainConfig, env):
    """The default dataset is the toy set, generated and packed on first use (once per node)."""
    if cfg.data == TOY and not os.path.exists(os.path.join(TOY, "toy_val.mean_std.json")):
        if env.local_rank == 0:
            from toolkit.toy import ensure_toy_dataset
            ensure_toy_dataset(TOY)
        dist.barrier()


def resume_command(cfg: TrainConfig, env) -> str:
    """The command to continue: torchrun's processes per node from its LOCAL_WORLD_SIZE; on several
    nodes, with the rendezvous flags as a hint (the same command on every node)."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", env.world))
    nodes = int(os.environ.get("GROUP_WORLD_SIZE", 0)) or max(env.world // max(local, 1), 1)
    launcher = ""
    if nodes > 1:
        launcher = (f"torchrun --nnodes={nodes} --nproc_per_node={local} --rdzv-backend=c10d "
                    "--rdzv-endpoint=HOST:PORT --rdzv-id=ID ")
    elif env.world > 1:
        launcher = f"torchrun --nproc_per_node={local} "
    extra = f" --checkpoints-dir {shlex.quote(cfg.checkpoints_dir)}" if cfg.checkpoints_dir != "checkpoints" else ""
    where = f"  (on each of the {nodes} nodes, with your rendezvous endpoint and id)" if nodes > 1 else ""
    return f"{launcher}tools/resume.py --prefix {shlex.quote(cfg.prefix)}{extra}{where}"


def earlier_run(cfg: TrainConfig, env) -> str:
    """A fresh run never overwrites another run's checkpoints: rank 0 looks, every rank hears."""
    found = checkpoint.list_checkpoints(cfg.checkpoints_dir, cfg.prefix).get(cfg.prefix, {}) if env.main else {}
    flag = torch.tensor([float(bool(found))], device=env.device)
    if not dist.all_reduce_max(flag).item():
        return ""
    return (f"{cfg.checkpoints_dir}/ already holds checkpoints of a run named {cfg.prefix!r}: continue it "
            f"with tools/resume.py --prefix {cfg.prefix}, start another with --prefix NAME, or delete them")


def stalled_error(exc: RuntimeError, env, timeout: float):
    """A dead loader worker (DataLoader raises from its SIGCHLD handler wherever the main thread is)
    or a lost rank, as one line; None for any other error."""
    return stalled(exc, None, "the data") or dist.lost_rank(exc, env, timeout)


def raise_stalled(exc: RuntimeError, env, timeout: float):
    """For the evaluation tools: a stalled worker or rank raised as its one line (its workers ended
    first); any other error raised as it is."""
    lost = stalled_error(exc, env, timeout)
    if lost is None:
        raise exc
    end_workers()
    raise lost from None


STATUS = {0: "finished", 130: "stopped"}  # any other exit code: "failed"


def recorded(run_fn):
    """LOGS/PREFIX.status.json for tools/runs.py and tools/sweep.py (what the log cannot say,
    toolkit/engine/status.py): "running" with a heartbeat while the run lives, then how the launch
    ended: finished (exit 0), stopped (130), failed (2, or an exception), also when it leaves at
    once (errors.hard_exit: a lost rank, a dead worker, a second Ctrl-C). Rank 0 writes it. A fresh
    run that will refuse to overwrite an earlier run's checkpoints leaves that run's file."""
    @functools.wraps(run_fn)
    def wrapper(cfg: TrainConfig, state=None, resumed_from=None, **handed) -> int:
        if os.environ.get("RANK", "0") != "0" or (
                state is None and checkpoint.list_checkpoints(cfg.checkpoints_dir, cfg.prefix)):
            return run_fn(cfg, state, resumed_from, **handed)
        last = at_hard_exit(lambda c: status.write_status(
            cfg.logs_dir, cfg.prefix, STATUS.get(c, "failed"), code=c))
        code = None
        try:
            with status.heartbeat(cfg.logs_dir, cfg.prefix):
                code = run_fn(cfg, state, resumed_from, **handed)
            return code
        finally:
            forget_hard_exit(last)
            status.write_status(cfg.logs_dir, cfg.prefix, STATUS.get(code, "failed"), code=code)
    return wrapper


def preflight_paths(cfg: TrainConfig, env) -> str:
    """The output folders, checked before the log opens: the problem's one line, or ''."""
    try:
        preflight.check_output_dirs(cfg, env)
    except UserError as exc:
        return exc.message
    return ""


@recorded
def run(cfg: TrainConfig, state=None, resumed_from=None, hook=ModelHook) -> int:
    """Train cfg's run (from `state`, the checkpoint `resumed_from`, when resuming); `hook`: what the
    run adds around its model (toolkit/engine/model.py's ModelHook)."""
    determinism.apply(cfg.deterministic)  # before any GPU work
    env = dist.setup(cfg.timeout)
    clash = earlier_run(cfg, env) if state is None else ""
    if clash:
        if env.main:
            print(f"Error: {clash}", file=sys.stderr)
        dist.teardown()
        return 2
    problem = preflight_paths(cfg, env)
    if problem:
        if env.main:
            print(f"Error: {problem}", file=sys.stderr)
        dist.teardown()
        return 2
    stop = StopRequest().install()
    log = setup_logging(os.path.join(cfg.logs_dir, cfg.prefix + ".log"), env.main)
    try:
        ensure_data(cfg, env)
        cfg = preflight.settle_num_classes(cfg, env, log)
        trainer = Trainer(cfg, env, log, state, resumed_from, stop, hook=hook)
        if state is not None:  # the branch starts at the first step it trains, not before
            trainer.before_first_step = functools.partial(branch_off, cfg, env, log, state)
        result = trainer.fit()
        if result.get("stopped"):
            log.info(f"to resume: {resume_command(cfg, env)}")
            return 130
        log.info(f"Training finished: {cfg.epochs} epochs; checkpoints in {cfg.checkpoints_dir}/, "
                 f"log in {os.path.join(cfg.logs_dir, cfg.prefix + '.log')}")
        return 0
    except (click.ClickException, RuntimeError) as exc:  # one line from any rank, or a traceback (a bug)
        err = exc if isinstance(exc, click.ClickException) else stalled_error(exc, env, cfg.timeout)
        if err is None:
            raise
        return failed(err, env, log)
    finally:
        stop.uninstall()
        dist.teardown()


def failed(err: click.ClickException, env, log) -> int:
    """Say a run's error once, whichever rank met it, and leave. A rank's own error is told to the
    others (rank 0's log gets it from a rank that failed alone); rank 0's error, which every rank
    may meet alike (a flag, the data), is said by rank 0 only; a rank that lost another says what
    that rank told. With several ranks the exit is at once: a collective can no longer finish."""
    if isinstance(err, ReportedElsewhere):
        return err.exit_code
    message = err.message
    if isinstance(err, dist.LostRank):
        told = dist.told_errors(env, wait=5.0)
        if told:
            r = min(told)
            message = (f"rank {env.rank} stopped with rank {r}, which failed: {told[r]}"
                       if env.world > 1 else told[r])
    elif env.world > 1:
        dist.tell_error(env, message)
        if not env.main:
            same = dist.told_errors(env, wait=2.0, ranks=[0]).get(0) == message
            message = None if same else f"rank {env.rank}: {message}"
    if message is not None:
        log.error(f"Error: {message}")  # every rank's console (warnings and up); rank 0's log file too
    if isinstance(err, Stalled):
        end_workers()
    if env.world > 1 or getattr(err, "hard", False):  # hard: a dead worker's pipeline would wait at exit
        end_workers()
        hard_exit(err.exit_code)
    return err.exit_code


def branch_off(cfg: TrainConfig, env, log, state: dict):
    """Resuming before the newest checkpoint: the later ones move to an abandoned-branch folder
    (rank 0, at the first training step on every rank: a run that fails or is stopped before it,
    or whose resumed validation pass is cut short, moves nothing)."""
    if env.main:
        position = (state["epoch"], state["batch"])
        folder = branches.start_branch(cfg.checkpoints_dir, cfg.prefix, position)
        if folder:
            log.info(mxlog.branch_line(state["epoch"], state["batch"], folder))
    dist.barrier()


def resume_point(checkpoints_dir: str, prefix, epoch, lr=None, **overrides) -> tuple:
    """(cfg, state, path) to continue a run from PREFIX-%04d.pt (or the newest checkpoint) with
    optional overrides."""
    path = checkpoint.find(checkpoints_dir, prefix, epoch)
    state = checkpoint.load(path)
    # the run continues under the prefix it is resumed as (its file's name): a copied checkpoint
    # (MXNet's way to fork an experiment) never writes into the original run's files
    cfg = override(from_dict(state["config"]), checkpoints_dir=checkpoints_dir,
                   prefix=checkpoint.prefix_of(path), **overrides)
    if "meta" in state and os.path.isdir(cfg.data):  # the data's class map must be the run's
        from toolkit.engine.meta import check_class_map
        check_class_map(state["meta"], cfg.data, path)
    if lr is not None:  # a new LR takes effect from here: constant unless a schedule is given too
        cfg = override(cfg, lr=lr, lr_from_epoch=state["position"],
                       lr_schedule=overrides.get("lr_schedule") or "constant",
                       warmup_epochs=overrides.get("warmup_epochs") or 0.0)
    if state["epoch"] >= cfg.epochs and checkpoint.pending_validation(path, state) is None:
        raise UserError(f"{path} is already at epoch {state['epoch']} of {cfg.epochs}; "
                        f"pass --epochs N (N > {state['epoch']}) to train further")
    return cfg, state, path
