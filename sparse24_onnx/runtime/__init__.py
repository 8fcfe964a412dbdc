"""onnxruntime plumbing shared by validation, calibration and the checks: quiet sessions on the right
execution provider (``sessions``), and feeds read, loaded or generated for a model's inputs (``feeds``)."""
