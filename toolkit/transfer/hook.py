"""The trainer's one hook into transfer learning: `Transfer(cfg, env, fresh)` reads --init-from on a
fresh run and settles the normalisation; `attach(model)` loads the weights and finds the head;
`start_epoch(model, epoch)` freezes and unfreezes (toolkit/transfer/freeze.py). With none of the
transfer options set it does nothing."""
from typing import List, Optional

import torch.nn as nn

from toolkit.engine import dist
from toolkit.engine.model import ModelHook
from toolkit.errors import UserError
from toolkit.transfer.freeze import Freezer, head_keys
from toolkit.transfer.weights import Source, read_source, source_mean_std, torchvision_file


def read_on_every_rank(text: str, env) -> Source:
    """Each node's first process downloads torchvision's file if needed; then every rank reads it
    (and reaches the same verdict, so all stop together on a missing file)."""
    if text.startswith("torchvision:") and env.local_rank == 0:
        try:
            torchvision_file(text.split(":", 1)[1], download=True)
        except UserError:
            pass  # read_source below says so, on every rank
    dist.barrier()
    return read_source(text, download=False)


class Transfer(ModelHook):
    def __init__(self, cfg, env, fresh: bool, source: Optional[Source] = None):
        if source is None and fresh and cfg.init_from:
            source = read_on_every_rank(cfg.init_from, env)
        self.source, self.fresh = source, fresh
        self.lines: List[str] = []
        self.head: List[str] = []
        self.freezer: Optional[Freezer] = None

    def resolve(self, cfg, head_used: bool = True):
        """cfg with the source's normalisation; head_used=False (features at a layer: the labels are
        the data's, the head never runs) skips the class-map check of a kept head."""
        cfg = self._normalisation(cfg)
        if head_used:
            self.check_head_classes(cfg)
        return cfg

    def _normalisation(self, cfg):
        """cfg with mean/std made explicit where --init-from or --mean/--std set them: the flags
        first ("dataset": the dataset's), then the source's (ImageNet's for torchvision's weights)."""
        from toolkit.data import dataset_info
        from toolkit.engine.config import override
        cfg = self.graph(cfg)
        if not self.fresh:
            return cfg  # a resume keeps its run's (a run older than this rule: the dataset's)
        data = dataset_info(cfg.data)
        if cfg.mean is None and cfg.std is None and self.source is None:
            # the dataset's, written into the run's config from its start: a resume keeps them
            # whatever becomes of the dataset's mean/std file (one truth: the checkpoint)
            return override(cfg, mean=tuple(data.mean), std=tuple(data.std))
        from_source = self.source is not None and (cfg.mean is None or cfg.std is None)
        base = source_mean_std(self.source) if from_source else \
            (data.mean, data.std, f"the dataset's ({cfg.data})")
        picked = []
        for given, default, ours in ((cfg.mean, base[0], data.mean), (cfg.std, base[1], data.std)):
            if given is None:
                picked.append((tuple(default), base[2]))
            else:  # () is --mean/--std dataset
                picked.append((tuple(given) or tuple(ours), "--mean/--std" if given else f"the dataset's ({cfg.data})"))
        (mean, mean_from), (std, std_from) = picked
        origin = mean_from if mean_from == std_from else f"mean {mean_from}, std {std_from}"
        self.lines.append(f"normalisation: mean {_fmt(mean)} std {_fmt(std)}: {origin} "
                          f"(the dataset's: mean {_fmt(data.mean)} std {_fmt(data.std)})")
        return override(cfg, mean=mean, std=std)

    def graph(self, cfg):
        """An imported MXNet model (tools/import_mxnet.py): its graph, stored in the source's
        configuration, is the network recipe mxnet builds (the one hook for graph checkpoints)."""
        graph = (self.source.config or {}).get("graph") if self.fresh and self.source is not None else None
        if not graph or cfg.graph:
            return cfg
        if cfg.recipe != "mxnet":
            raise UserError(f"--init-from {self.source.text} is an imported MXNet model: train it with "
                            "--recipe mxnet (its graph comes with it)")
        from toolkit.engine.config import override
        from toolkit.mxnet_import.graph import check_input_size
        size = self.source.config.get("image_size")
        problem = check_input_size(graph, cfg.image_size)
        if problem:
            raise UserError(f"--init-from {self.source.text}: {problem}; pass --image-size {size} (its size)")
        return override(cfg, graph=graph)

    def check_head_classes(self, cfg):
        """Training: a source checkpoint's head kept (same class count, no --new-head) must mean the same
        classes on this dataset: its class map against the source's names, one line if they differ."""
        meta = getattr(self.source, "meta", None)
        if meta and not cfg.new_head and cfg.num_classes == meta["num_classes"]:
            from toolkit.engine.meta import check_class_map
            check_class_map(meta, cfg.data, f"--init-from {self.source.text}",
                            "pass --new-head (a new classifier for this dataset's classes), or make the "
                            "lists with the source's classes.tsv in the dataset folder")

    def attach(self, model: nn.Module, cfg):
        """Load --init-from into `model` and set up the freezing; call before building the optimizer."""
        if self.source is None and not (cfg.freeze_epochs or cfg.freeze_until or cfg.head_lr_mult != 1):
            return
        self.head = head_keys(cfg.recipe, cfg.model_kwargs(), model)
        if self.source is not None:
            from toolkit.transfer.weights import load_into
            self.lines[:0] = load_into(model, self.source, cfg.recipe, self.head, cfg.new_head)
        if cfg.freeze_epochs or cfg.freeze_until:
            self.freezer = Freezer(model, self.head, cfg.freeze_epochs, cfg.freeze_until)
            self.lines.append(f"fine-tuning: head {', '.join(self.head)}; " + self._plan(cfg, model))
        if cfg.head_lr_mult != 1:
            self.lines.append(f"head learning rate: {cfg.head_lr_mult} x the LR")

    def _plan(self, cfg, model) -> str:
        parts = []
        if cfg.freeze_epochs:
            parts.append(f"body frozen (BatchNorm statistics too) before Epoch[{cfg.freeze_epochs}] "
                         f"({self.freezer.describe(0, model)})")
        if cfg.freeze_until:
            parts.append(f"layers up to {cfg.freeze_until} frozen throughout "
                         f"({self.freezer.describe(cfg.freeze_epochs, model)} from Epoch[{cfg.freeze_epochs}])")
        return "; ".join(parts)

    def start_epoch(self, model: nn.Module, epoch: int, log=None) -> bool:
        """Freeze for this epoch (after model.train()); True when what learns changed (the trainer then
        rebuilds DDP, which registers the parameters that learn when it is built)."""
        if self.freezer is None:
            return False
        changed = self.freezer.apply(model, epoch)
        if changed and log is not None:
            log.info(f"Epoch[{epoch}] body unfrozen: {self.freezer.describe(epoch, model)}")
        return changed


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in values) + ")"
