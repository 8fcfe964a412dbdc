"""``python -m sparse24_onnx COMMAND ...``: the same as the ``sparse24`` command."""

import sys

from .cli import main

sys.exit(main())
