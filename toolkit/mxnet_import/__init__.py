"""Bring MXNet models over: PREFIX-symbol.json + PREFIX-NNNN.params -> one of our checkpoints.

params.py reads .params, symbol.py symbol JSON, convert.py pairs them into the graph as data,
graph.py runs it (GraphNet), checkpoint.py writes the checkpoint every tool takes.
"""
