"""The pipelines behind the commands, as library functions: prune, check, expand.

Each takes a model (a path or an ``onnx.ModelProto``) and keyword options that
mirror the command line, returns a result whose ``report`` is what ``--report``
writes, logs progress to the ``sparse24_onnx`` logger and raises the exceptions
of :mod:`sparse24_onnx.errors`; none prints or exits.
"""
