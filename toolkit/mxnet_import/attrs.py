"""An MXNet node's attributes (strings in the symbol JSON) as Python values, for the operators
(toolkit/mxnet_import/ops.py) and pooling (toolkit/mxnet_import/pooling.py)."""
import ast
from typing import Dict


def value(attrs: Dict[str, str], key: str, default=None):
    """An attribute as a Python value: '(3, 3)' -> (3, 3), 'True' -> True, '1e-05' -> 1e-05."""
    text = attrs.get(key)
    if text is None or text == "None":
        return default
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def tup(attrs, key, default, n=2):
    v = value(attrs, key, default)
    v = tuple(v) if isinstance(v, (tuple, list)) else (v,) * n
    return v if v else (default,) * n
