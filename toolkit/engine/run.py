"""A training run from start to exit code (toolkit/training.py composes it with what the engine
does not know of: transfer learning, the status file; tools/train.py and tools/resume.py call that).

run() sets up the process group (torchrun or one process), logging and the stop handler, trains, and
returns the process exit code: 0 done, 130 stopped by Ctrl-C/SIGTERM (a checkpoint was written),
2 a user error (one line, no traceback).
"""
import os
import shlex
import sys

import torch

from toolkit import mxlog
from toolkit.data.workers import end_workers, stalled
from toolkit.engine import branches, checkpoint, determinism, dist, preflight
from toolkit.engine.config import TrainConfig, from_dict, override
from toolkit.engine.logs import setup_logging
from toolkit.engine.model import ModelHook
from toolkit.engine.signals import StopRequest
from toolkit.engine.trainer import Trainer
from toolkit.errors import Stalled, UserError

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


def preflight_paths(cfg: TrainConfig, env) -> str:
    """The output folders, checked before the log opens: the problem's one line, or ''."""
    try:
        preflight.check_output_dirs(cfg, env)
    except UserError as exc:
        return exc.message
    return ""


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
        if state is not None:
            branch_off(cfg, env, log, state)
        result = trainer.fit()
        if result.get("stopped"):
            log.info(f"to resume: {resume_command(cfg, env)}")
            return 130
        log.info(f"Training finished: {cfg.epochs} epochs; checkpoints in {cfg.checkpoints_dir}/, "
                 f"log in {os.path.join(cfg.logs_dir, cfg.prefix + '.log')}")
        return 0
    except UserError as exc:
        if env.main:
            log.error(f"Error: {exc.message}")
        return 2
    except (Stalled, RuntimeError) as exc:  # a worker or a rank that stopped answering: one line, any rank
        lost = exc if isinstance(exc, Stalled) else stalled_error(exc, env, cfg.timeout)
        if lost is None:
            raise
        log.error(f"Error: {lost.message}")
        end_workers()
        if env.world > 1:  # a collective can no longer finish: do not wait for it in teardown
            os._exit(lost.exit_code)
        return lost.exit_code
    finally:
        stop.uninstall()
        dist.teardown()


def branch_off(cfg: TrainConfig, env, log, state: dict):
    """Resuming before the newest checkpoint: the later ones move to an abandoned-branch folder
    (rank 0, once every rank is ready to train: a run that fails to start moves nothing)."""
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
    cfg = override(from_dict(state["config"]), checkpoints_dir=checkpoints_dir, **overrides)
    if lr is not None:  # a new LR takes effect from here: constant unless a schedule is given too
        cfg = override(cfg, lr=lr, lr_from_epoch=state["position"],
                       lr_schedule=overrides.get("lr_schedule") or "constant",
                       warmup_epochs=overrides.get("warmup_epochs") or 0.0)
    if state["epoch"] >= cfg.epochs and checkpoint.pending_validation(path, state) is None:
        raise UserError(f"{path} is already at epoch {state['epoch']} of {cfg.epochs}; "
                        f"pass --epochs N (N > {state['epoch']}) to train further")
    return cfg, state, path
