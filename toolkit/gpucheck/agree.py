"""Checks that fail on wrong results, not only on crashes: the quickstart's validation accuracy against a
floor well above chance, and the DALI loader's evaluation tensors (mixed decode on the GPU, DALI's CPU
pipeline with --cpu) against the torch loader's on the same records, within a stated tolerance."""
from toolkit.gpucheck.common import CheckFailed, Context, toy_data

# the two loaders' evaluation tensors, compared in 0-255 levels (the normalisation undone): decoders
# (nvJPEG vs libjpeg-turbo) and resizers round differently, by a level or two; a misplaced crop (one
# pixel), another resize or normalisation, or another record is many levels off
MEAN_LEVELS = 1.5       # mean |difference| over every value
P99_LEVELS = 8.0        # 99th percentile of |difference|


def accuracy_floor(figures: dict, floor: float, classes: int = 10) -> dict:
    """The quickstart's figures, or CheckFailed when its validation rank-1 is under `floor`."""
    rank1 = figures["val_rank1"]
    if rank1 < floor:
        raise CheckFailed(f"validation rank-1 {rank1:.3f} is under the floor {floor:g} (chance: {1 / classes:g}): "
                          "the run trains, but wrongly (labels, normalisation, loader)", **figures)
    return figures


def compare(pairs, std) -> dict:
    """pairs: [((images, labels) of loader A, (images, labels) of loader B), ...] batch by batch, images
    normalised with per-channel `std` (0-255). The figures, or CheckFailed naming what differs."""
    import torch
    std = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    diffs, images = [], 0
    for b, ((xa, ya), (xb, yb)) in enumerate(pairs):
        if xa.shape != xb.shape or not torch.equal(ya.cpu(), yb.cpu()):
            raise CheckFailed(f"batch {b}: the loaders give different {'shapes' if xa.shape != xb.shape else 'labels'} "
                              f"({tuple(xa.shape)} vs {tuple(xb.shape)}): not the same records in the same order")
        diffs.append(((xa.float().cpu() - xb.float().cpu()).abs() * std).flatten())
        images += len(ya)
    if not diffs:
        raise CheckFailed("no batch to compare")
    d = torch.cat(diffs)
    figures = {"images": images, "mean_levels": round(d.mean().item(), 4),
               "p99_levels": round(d.quantile(0.99).item() if d.numel() <= 16_000_000 else
                                   d[::max(d.numel() // 16_000_000, 1)].quantile(0.99).item(), 3),
               "max_levels": round(d.max().item(), 3), "tolerance": f"mean <= {MEAN_LEVELS}, p99 <= {P99_LEVELS}"}
    if figures["mean_levels"] > MEAN_LEVELS or figures["p99_levels"] > P99_LEVELS:
        raise CheckFailed(f"the DALI and torch loaders' evaluation images differ by {figures['mean_levels']:.2f} "
                          f"levels on average (99th percentile {figures['p99_levels']:.1f}; tolerance "
                          f"{MEAN_LEVELS:g} / {P99_LEVELS:g})", **figures)
    return figures


def loaders_agree(ctx: Context) -> dict:
    import torch
    from toolkit.data import build_loader, dataset_info
    s, data = ctx.sizes, toy_data(ctx)
    device = torch.device("cuda" if ctx.gpu else "cpu")
    common = dict(split="val", train=False, batch_size=s["agree_batch"], image_size=s["agree_size"], device=device,
                  workers=s["eval_workers"], seed=0)
    dali, ref = build_loader(data, backend="dali", **common), build_loader(data, backend="torch", **common)
    figures = compare(zip(dali, ref), dataset_info(data).std)
    return {"decode": "mixed" if ctx.gpu else "cpu", "image_size": s["agree_size"], **figures}
