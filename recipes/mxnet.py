"""An imported MXNet model (tools/import_mxnet.py): the network is the graph stored in the run's
configuration (`graph`, toolkit/mxnet_import/graph.py), not a paper's; `--num-classes` other than
the graph's gives it a new classifier. Train it with `tools/train.py --recipe mxnet --init-from
IMPORTED.pt` (the graph comes with the weights). Defaults are fine-tuning's, as in MXNet's
example/image-classification/fine-tune.py (lr 0.01, batch 32, 10 epochs, step at 5).
"""
import json

from toolkit.errors import UserError
from toolkit.registry import TrainDefaults, register_recipe

DEFAULTS = TrainDefaults(optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=1e-4, batch_size=32,
                         epochs=10, lr_schedule="step", lr_step_epochs=(5,), image_size=224,
                         source="MXNet example/image-classification/fine-tune.py")


@register_recipe("mxnet", defaults=DEFAULTS, min_image_size=1)
def mxnet(graph: str = "", num_classes=None, image_size=224, **others):
    """GraphNet from the configuration's graph; model options other than num_classes do not apply."""
    given = sorted(k for k, v in others.items() if v is not None)
    if given:
        raise UserError(f"recipe mxnet: --{given[0].replace('_', '-')} does not apply to an imported graph "
                        "(only --num-classes and --image-size do); leave it out")
    if not graph:
        raise UserError("recipe mxnet runs an imported MXNet graph: start from one with --init-from FILE.pt "
                        "(written by tools/import_mxnet.py)")
    from toolkit.mxnet_import.graph import GraphNet
    return GraphNet(json.loads(graph), num_classes)
