#!/usr/bin/env python3
"""Benchmarks: `tools/benchmark.py im2rec|imagenet|loader|train|parse-log|checkpoint|gpu|mxnet-import ...`;
see `--help` of each. `gpu` runs every GPU check (tools/gpu_check.sh sets up the environment first and calls it)."""
import importlib

import click

# each benchmark is a click command named `cli` in toolkit/benchmarks/<module>.py
_COMMANDS = {"im2rec": "im2rec", "imagenet": "imagenet", "loader": "loader", "train": "train",
             "parse-log": "parse_log", "checkpoint": "checkpoint", "gpu": "gpu", "mxnet-import": "mxnet_import"}


class _LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(_COMMANDS)

    def get_command(self, ctx, name):
        if name not in _COMMANDS:
            return None
        return importlib.import_module(f"toolkit.benchmarks.{_COMMANDS[name]}").cli


@click.group(cls=_LazyGroup)
def main():
    """Measure throughput against a baseline run in the same invocation; print ratios."""


if __name__ == "__main__":
    main()
