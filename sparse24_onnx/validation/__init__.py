"""Validation: how far the pruned model's outputs moved from the original's (``compare``)."""
