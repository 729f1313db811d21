"""The evaluation pass and the loaders of a run (training's validation, tools/evaluate.py, the
ensemble and feature tools).
"""
import torch
import torch.nn.functional as F

from toolkit.data import build_loader
from toolkit.data.discovery import has_split
from toolkit.engine import dist
from toolkit.engine.config import TrainConfig
from toolkit.engine.logs import Meter
from toolkit.engine.signals import Agreement
from toolkit.engine.step import autocast


def _loader_args(cfg: TrainConfig, env, backend=None, workers=None) -> dict:
    return dict(image_size=cfg.image_size, eval_resize=cfg.eval_resize, rank=env.rank, world_size=env.world,
                seed=cfg.seed, backend=backend or cfg.loader, device=env.device,
                workers=cfg.workers if workers is None else workers, channels_last=cfg.channels_last,
                timeout=cfg.timeout, mean=cfg.mean, std=cfg.std)


def make_eval_loader(cfg: TrainConfig, env, data=None, split=None, batch_size=None, backend=None,
                     workers=None, ten_crop=False):
    """The evaluation loader of a run (its image size, resize and layout): training's validation
    and tools/evaluate.py."""
    return build_loader(data or cfg.data, split or cfg.val_split, train=False,
                        batch_size=batch_size or cfg.batch_size, ten_crop=ten_crop,
                        **_loader_args(cfg, env, backend, workers))


def make_loaders(cfg: TrainConfig, env):
    train = build_loader(cfg.data, cfg.train_split, train=True, batch_size=cfg.batch_size,
                         min_scale=cfg.min_crop_scale, color_jitter=cfg.color_jitter,
                         pca_lighting=cfg.pca_lighting, **_loader_args(cfg, env))
    if not has_split(cfg.data, cfg.val_split):
        return train, None
    return train, make_eval_loader(cfg, env, backend=train.backend)  # validation decodes as training


def evaluate(model, loader, env, num_classes: int, amp: str = "off", stop=None) -> dict:
    """Top-1/top-5/cross-entropy over a split, exact across ranks (each image counted once).
    With `stop` (training's validation), ranks agree on a stop request at every batch and all leave
    the pass at the same one: {"stopped": True}; a request seen only at the end: "stop_after"."""
    model.eval()
    meter = Meter(env.device)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=env.device)
    loader.set_epoch(0)
    agree = Agreement(stop, env.device, len(loader)) if stop is not None else None
    stopped = False
    with torch.no_grad(), autocast(env, amp):
        for x, y in loader:
            if x.dim() == 5:  # ten-crop: average the softmax over the crops
                b, c = x.shape[:2]
                logits = model(x.flatten(0, 1)).float().softmax(1).view(b, c, -1).mean(1).log()
            else:
                logits = model(x).float()
            meter.update(logits, y, F.cross_entropy(logits, y, reduction="sum"))
            confusion += torch.bincount(y * num_classes + logits.argmax(1),
                                        minlength=num_classes ** 2).view(num_classes, num_classes)
            if agree is not None and agree.round():
                stopped = True
                break
    if agree is not None and (stopped or agree.finish()):
        agree.drain()
        return {"stopped": True}
    sums = dist.all_reduce_sum(meter.sums.clone())
    dist.all_reduce_sum(confusion)
    return {**meter.metrics(sums), "images": int(sums[3].item()), "confusion": confusion.cpu(),
            "stop_after": agree is not None and agree.drain()}
