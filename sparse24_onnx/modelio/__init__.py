"""Model I/O: loading with clear errors, atomic staged output, the compressed storage format.

``load`` reads a model (external data memory-mapped), ``staging`` writes one
atomically, ``writer`` serialises an embedded model from the tensors' buffers,
``provenance`` reads the ``sparse24`` metadata entry, ``compressed`` is the
compressed format (write and read back) and ``expand`` turns it back into the
dense-pruned model.
"""
