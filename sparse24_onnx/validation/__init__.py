"""Validation: feeds for the model, onnxruntime sessions, output comparison, the accuracy budget.

``feeds`` reads ``.npz`` feeds or generates them, ``sessions`` opens and runs
onnxruntime quietly, ``compare`` measures how far outputs moved, ``budget``
finds the fewest layers to leave dense for an error bound (``--auto-exclude``).
"""
