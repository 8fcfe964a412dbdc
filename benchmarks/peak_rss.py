"""Run a module as ``python -m MODULE ARGS...`` and report its peak resident memory.

    python benchmarks/peak_rss.py sparse24_onnx.optimize in.onnx out.onnx --no-validate
    python benchmarks/peak_rss.py script.py ARGS...          (a script path instead of a module)

Prints one JSON line on stderr at exit: ``{"peak_rss_mib": ..., "exit_code": ...}``.
The peak is VmHWM from /proc/self/status, which belongs to this process alone
(``ru_maxrss`` would include the parent's memory at fork time).
"""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def main() -> None:
    module = sys.argv[1]
    sys.argv = [module, *sys.argv[2:]]
    code = 0
    try:
        if module.endswith(".py"):
            runpy.run_path(module, run_name="__main__")
        else:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    sys.stderr.write(json.dumps({"peak_rss_mib": round(peak_rss_mib(), 1), "exit_code": code}) + "\n")
    sys.exit(code)


if __name__ == "__main__":
    main()
