"""tools/average.py: the mean of the weights of a run's last K epoch checkpoints, with BatchNorm
statistics recomputed on a pass over the training data (torch.optim.swa_utils.update_bn), written
as an ordinary checkpoint under a new prefix (default PREFIX-avgK), so tools/evaluate.py,
tools/resume.py, tools/predict.py and tools/export.py take it as any other.

The averaged checkpoint keeps the last averaged epoch's number, optimizer and scaler state and
configuration (its prefix changed): resuming it trains on from that epoch with the averaged weights.
"""
import itertools
import os
import time

import torch
from torch.optim.swa_utils import update_bn

from toolkit.data import build_loader
from toolkit.engine import checkpoint, dist
from toolkit.engine.config import from_dict, override
from toolkit.errors import UserError
from toolkit.engine.meta import meta_of, trained_config
from toolkit.engine.model import build_eval_model


def last_epochs(checkpoints_dir: str, prefix: str, k: int):
    """Paths of the newest k epoch checkpoints (stops mid-epoch are not epochs), oldest first."""
    found = checkpoint.list_checkpoints(checkpoints_dir, prefix).get(prefix, {})
    epochs = sorted(e for e, b in found if b == 0)
    if len(epochs) < k:
        raise UserError(f"--last {k}: {checkpoints_dir}/ holds {len(epochs)} epoch checkpoint(s) of run "
                        f"{prefix!r} ({', '.join(map(str, epochs)) or 'none'}); lower --last or train longer")
    return epochs[-1], [found[(e, 0)] for e in epochs[-k:]]


def _same_network(states, paths):
    first = from_dict(states[0]["config"])
    for state, path in zip(states[1:], paths[1:]):
        cfg = from_dict(state["config"])
        if (cfg.recipe, cfg.model_kwargs()) != (first.recipe, first.model_kwargs()) or \
                state["model"].keys() != states[0]["model"].keys():
            raise UserError(f"{path} is another network than {paths[0]} ({cfg.recipe} {cfg.model_kwargs()}); "
                            "average checkpoints of one run")


def average_weights(states) -> dict:
    """Floating-point tensors: the mean (accumulated in float64); others (counters): the last's."""
    out = {}
    for key, last in states[-1]["model"].items():
        if last.is_floating_point():
            total = sum(s["model"][key].double() for s in states)
            out[key] = (total / len(states)).to(last.dtype)
        else:
            out[key] = last.clone()
    return out


def has_batchnorm(model) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def recompute_bn(model, cfg, env, max_batches=None, batch_size=None, workers=None) -> int:
    """BatchNorm running statistics of `model` from a pass over the training split (with the training
    augmentation and the run's normalisation, as the statistics were gathered in training; `cfg`
from meta.trained_config); returns the images seen."""
    loader = build_loader(cfg.data, cfg.train_split, train=True, batch_size=batch_size or cfg.batch_size,
                          image_size=cfg.image_size, mean=cfg.mean, std=cfg.std, rank=0, world_size=1, seed=cfg.seed,
                          backend="torch" if env.device.type == "cpu" else cfg.loader, device=env.device,
                          workers=cfg.workers if workers is None else workers, min_scale=cfg.min_crop_scale,
                          channels_last=cfg.channels_last)
    loader.set_epoch(cfg.epochs)  # an epoch order of its own
    seen = []

    def batches():
        for x, y in itertools.islice(iter(loader), max_batches):
            seen.append(len(y))
            yield x

    model.to(env.device)
    update_bn(batches(), model, device=env.device)
    return sum(seen)


def averaged_state(states, paths, model, out_prefix: str, bn_images: int, data=None) -> dict:
    state = dict(states[-1])
    state["model"] = {k: v.cpu() for k, v in checkpoint.bare_state_dict(model).items()}
    state["config"] = {**state["config"], "prefix": out_prefix}
    state["meta"] = meta_of(states[-1], paths[-1], data)
    state["batch"], state["train_sums"] = 0, [0.0] * 4
    state["averaged"] = {"checkpoints": [os.path.basename(p) for p in paths],
                         "epochs": [s["epoch"] for s in states], "bn_images": bn_images}
    state.pop("version", None)
    return state


def run_average(checkpoints_dir="checkpoints", prefix=None, last=5, out_prefix=None, data=None,
                bn_batches=None, batch_size=None, workers=None) -> str:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("tools/average.py runs as one process; start it without torchrun")
    if prefix is None:
        runs = checkpoint.list_checkpoints(checkpoints_dir)
        if len(runs) != 1:
            raise UserError(f"{checkpoints_dir}/ holds {len(runs)} runs ({', '.join(sorted(runs)) or 'none'}); "
                            "choose one with --prefix")
        prefix = next(iter(runs))
    out_prefix = out_prefix or f"{prefix}-avg{last}"
    epoch, paths = last_epochs(checkpoints_dir, prefix, last)
    out = checkpoint.checkpoint_path(checkpoints_dir, out_prefix, epoch)
    if os.path.exists(out):
        raise UserError(f"{out} exists; remove it or choose another --out-prefix")
    states = [checkpoint.load(p) for p in paths]
    _same_network(states, paths)
    meta = meta_of(states[-1], paths[-1], data)
    cfg = trained_config(override(from_dict(states[-1]["config"]), data=data), meta)  # the run's normalisation
    if not os.path.isdir(cfg.data):
        raise UserError(f"{cfg.data}: the run's dataset folder is not here (the BatchNorm statistics are "
                        "recomputed on its training split); pass --data DIR")
    t0 = time.perf_counter()
    model = build_eval_model(cfg, {"model": average_weights(states)})
    env = dist.setup()
    bn_images = recompute_bn(model, cfg, env, bn_batches, batch_size, workers) if has_batchnorm(model) else 0
    checkpoint.save(out, averaged_state(states, paths, model, out_prefix, bn_images, cfg.data))
    print(f"{out}: mean of {', '.join(os.path.basename(p) for p in paths)}; BatchNorm statistics from "
          f"{bn_images} training images ({time.perf_counter() - t0:.1f} s). Evaluate: tools/evaluate.py "
          f"--checkpoints-dir {checkpoints_dir} --prefix {out_prefix}")
    return out
