"""What the calibrated methods learn from data: each layer input's statistics, captured with onnxruntime
(``capture``), and what a calibrated run did per layer, summarised (``summary``).  The methods themselves
are in :mod:`sparse24_onnx.methods`."""
