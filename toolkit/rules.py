"""The ranges of the numeric flags, each written once: click's option types (toolkit/cli.py and the
tools' own options) are made from them, and the library checks the same rule where a value comes
without the command line (TrainConfig's validate, build_loader).

    rule("lr").click_type()        # click.FloatRange(min=0, min_open=True)
    rule("lr").problem(0.0)        # "--lr 0.0: must be positive" (None when the value is in range)
"""
import dataclasses
from typing import Optional


@dataclasses.dataclass(frozen=True)
class Range:
    flag: str
    kind: type = int
    min: Optional[float] = None
    max: Optional[float] = None
    min_open: bool = False
    max_open: bool = False

    def click_type(self):
        import click
        make = click.IntRange if self.kind is int else click.FloatRange
        return make(self.min, self.max, min_open=self.min_open, max_open=self.max_open)

    def contains(self, value) -> bool:
        low = self.min is None or (value > self.min if self.min_open else value >= self.min)
        high = self.max is None or (value < self.max if self.max_open else value <= self.max)
        return low and high

    def describe(self) -> str:
        if self.max is not None:
            return (f"must be in {'(' if self.min_open else '['}{self.min:g}, {self.max:g}"
                    f"{')' if self.max_open else ']'}")
        if self.min_open:
            return "must be positive" if self.min == 0 else f"must be above {self.min:g}"
        return "must be 0 or more" if self.min == 0 else f"must be at least {self.min:g}"

    def problem(self, value) -> Optional[str]:
        """The one line for a value out of range, else None."""
        return None if value is None or self.contains(value) else f"{self.flag} {value}: {self.describe()}"


_POSITIVE = dict(kind=float, min=0, min_open=True)
_NOT_NEGATIVE = dict(kind=float, min=0)
_FRACTION = dict(kind=float, min=0, max=1, max_open=True)  # [0, 1)

# configuration key (or a tool's own parameter) -> its range
RANGES = {r.flag.lstrip("-").replace("-", "_"): r for r in (
    Range("--lr", **_POSITIVE), Range("--epochs", min=1), Range("--batch-size", min=1),
    Range("--grad-accum", min=1), Range("--log-every", min=1),
    Range("--min-crop-scale", kind=float, min=0, max=1, min_open=True), Range("--label-smoothing", **_FRACTION),
    Range("--freeze-epochs", min=0), Range("--head-lr-mult", **_POSITIVE),
    Range("--image-size", min=1), Range("--num-classes", min=1), Range("--dropout", **_FRACTION),
    Range("--width", **_POSITIVE), Range("--momentum", **_NOT_NEGATIVE), Range("--weight-decay", **_NOT_NEGATIVE),
    Range("--lr-factor", **_POSITIVE), Range("--poly-power", **_POSITIVE), Range("--warmup-epochs", **_NOT_NEGATIVE),
    Range("--workers", min=0), Range("--timeout", kind=float, min=1), Range("--eval-resize", min=1),
    Range("--color-jitter", **_NOT_NEGATIVE), Range("--pca-lighting", **_NOT_NEGATIVE),
    Range("--seed", min=0), Range("--keep-last", min=0),
    Range("--epoch", min=0),  # a checkpoint's number (completed epochs), --load-epoch in MXNet
)}


def rule(key: str) -> Range:
    return RANGES[key]


def problems(values: dict) -> list:
    """One line for each value out of its range, in RANGES' order (keys without a rule are not checked)."""
    found = (RANGES[k].problem(values[k]) for k in RANGES if k in values)
    return [p for p in found if p]
