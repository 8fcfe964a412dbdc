"""Defer importing sympy, which onnx-ir loads at import time but this tool never uses.

onnx-ir imports sympy (about 0.2 s, a quarter of a whole ``optimize`` run on a 64 MiB
model) for arithmetic on symbolic dimensions such as ``"batch" + 1``; reading,
pruning and writing a model never does that arithmetic.  Before onnx-ir is imported,
:func:`defer_sympy` puts stand-in modules in ``sys.modules`` for ``sympy`` and for
onnx-ir's ``_symbolic_shapes`` (which reads ``sympy.Max`` when it is imported).  A
stand-in carries the real module's spec, so ``import sympy`` finds it initialized and
returns it; the first read of any other attribute imports the real module, in full
and as usual, and from then on the stand-in forwards to it.  Code that does use
symbolic arithmetic therefore still works, only later.  Where sympy or onnx-ir is
already imported, or onnx-ir's layout differs, it does nothing.

(``importlib.util.LazyLoader`` cannot do this: ``import`` reads ``__spec__``, which
makes a lazy module load at once.)
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import types

__all__ = ["defer_sympy"]


class _Deferred(types.ModuleType):
    """Stands in ``sys.modules`` for a module until one of its attributes is read."""

    def __getattr__(self, attr: str) -> object:  # called only for attributes not set here
        name = self.__spec__.name
        if sys.modules.get(name) is self:
            del sys.modules[name]
        real = importlib.import_module(name)
        self.__dict__.update({k: v for k, v in vars(real).items() if k != "__class__"})
        return getattr(real, attr)


def _stand_in(spec: importlib.machinery.ModuleSpec) -> None:
    module = _Deferred(spec.name)
    module.__spec__ = spec
    module.__loader__ = spec.loader
    sys.modules[spec.name] = module


def defer_sympy() -> None:
    """Make onnx-ir's ``import sympy`` free until sympy is actually used."""
    if "sympy" in sys.modules or "onnx_ir" in sys.modules:
        return
    try:
        onnx_ir = importlib.util.find_spec("onnx_ir")
        sympy = importlib.util.find_spec("sympy")
    except (ImportError, ValueError):
        return
    if onnx_ir is None or sympy is None or not onnx_ir.submodule_search_locations:
        return
    shapes = importlib.machinery.PathFinder.find_spec(
        "onnx_ir._symbolic_shapes", list(onnx_ir.submodule_search_locations)
    )
    if shapes is None:
        return
    _stand_in(sympy)
    _stand_in(shapes)
