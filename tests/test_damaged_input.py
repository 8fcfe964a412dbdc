"""Damaged files (seeded random byte changes) end with exit code 0, 1 or 2, never an internal error.

Models, ``.npz`` feed files (for ``--inputs`` and ``--calibration``), and ModelProtos handed to the
Python API.

Each command runs in process on copies of a small model and of its compressed form with a
few bytes changed, mostly in the graph structure and in the tensors at the end of the
file.  A damaged file may still be a valid model (then 0 or 1) or be refused with a
one-line error (2); an internal error (4) or an exception is a bug.
"""

from __future__ import annotations

import contextlib
import io
import random

import pytest

from sparse24_onnx.check import main as check_main
from sparse24_onnx.expand import main as expand_main
from sparse24_onnx.optimize import main as optimize_main

COMMANDS = {
    "check": lambda path, out: check_main([str(path)]),
    "optimize": lambda path, out: optimize_main([str(path), str(out), "-q", "--no-validate"]),
    "expand": lambda path, out: expand_main([str(path), str(out), "-q"]),
}


def damaged(data: bytes, rng: random.Random) -> bytes:
    mutable = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        where = rng.random()
        if where < 0.5:
            position = rng.randrange(min(400, len(mutable)))
        elif where < 0.8:
            position = rng.randrange(max(0, len(mutable) - 3000), len(mutable))
        else:
            position = rng.randrange(len(mutable))
        mutable[position] = rng.randrange(256)
    return bytes(mutable)


def quietly(run) -> tuple[object, str]:
    """A command's exit code (or what escaped it, as text) and the end of its stderr; stdout dropped."""
    errors = io.StringIO()
    with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = run()
        except BaseException as error:  # the test reports whatever escapes
            code = f"raised {type(error).__name__}: {error}"
    return code, errors.getvalue().strip()[-200:]


def fuzz_commands(data: bytes, folder, *, seed: int, cases: int = 30) -> list[tuple]:
    """Every command on ``cases`` seeded damages of ``data``: the runs that ended other than 0, 1 or 2."""
    rng = random.Random(seed)
    failures = []
    for case in range(cases):
        path = folder / f"damaged{case}.onnx"
        path.write_bytes(damaged(data, rng))
        for name, run in COMMANDS.items():
            out = folder / f"out{case}.onnx"
            code, errors = quietly(lambda run=run, path=path, out=out: run(path, out))
            if code not in (0, 1, 2):
                failures.append((case, name, code, errors))
    return failures


@pytest.mark.parametrize("form", ["dense", "compressed"])
def test_damaged_models_never_cause_an_internal_error(models_dir, tmp_path, form):
    source = models_dir / "mlp.onnx"
    if form == "compressed":
        compressed = tmp_path / "compressed.onnx"
        assert optimize_main([str(source), str(compressed), "-q", "--no-validate", "--format", "compressed"]) == 0
        source = compressed
    assert not fuzz_commands(source.read_bytes(), tmp_path, seed=20261126)


def test_damaged_feed_files_never_cause_an_internal_error(models_dir, tmp_path):
    import numpy as np

    good = tmp_path / "good.npz"
    np.savez(good, x=np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32))
    data = good.read_bytes()
    rng = random.Random(20261201)
    failures = []
    for case in range(30):
        feed = tmp_path / f"feed{case}.npz"
        feed.write_bytes(damaged(data, rng))
        for option in (["--inputs", str(feed)], ["--method", "wanda", "--calibration", str(feed)]):
            args = [str(models_dir / "mlp.onnx"), str(tmp_path / "o.onnx"), "-q", *option]
            code, errors = quietly(lambda args=args: optimize_main(args))
            if code not in (0, 1, 2):
                failures.append((case, option[-2], code, errors))
    assert not failures, failures


def test_damaged_model_protos_given_to_the_api_raise_only_bad_input(models_dir, tmp_path):
    import onnx

    from sparse24_onnx import BadInput, prune_model

    data = (models_dir / "mlp.onnx").read_bytes()
    rng = random.Random(7)
    failures = []
    for case in range(30):
        try:
            proto = onnx.load_model_from_string(damaged(data, rng))
        except Exception:
            continue  # not even a ModelProto: nothing to hand to the API
        try:
            prune_model(proto, tmp_path / f"o{case}.onnx", validate=False)
        except BadInput:
            pass
        except BaseException as error:
            failures.append((case, f"{type(error).__name__}: {error}"[:200]))
    assert not failures, failures


def test_report_paths_colliding_with_model_files_never_destroy_them(models_dir, tmp_path):
    """Every --report that names one of the run's model files is refused, and every file is left as it was."""
    import hashlib

    import onnx

    source = tmp_path / "in.onnx"
    onnx.save(onnx.load(models_dir / "mlp.onnx"), source, save_as_external_data=True, location="in.onnx.data",
              size_threshold=0)  # fmt: skip
    out = tmp_path / "out.onnx"

    def digests():
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in tmp_path.iterdir() if p.is_file()}

    before = digests()
    targets = [source, tmp_path / "in.onnx.data", out, tmp_path / "out.onnx.data", tmp_path / "." / "in.onnx"]
    for target in targets:
        for args in (
            [str(source), str(out), "-q", "--report", str(target)],
            [str(source), str(out), "-q", "--external-data", "--report", str(target)],
        ):
            code, errors = quietly(lambda args=args: optimize_main(args))
            assert code == 2, (target, errors)
            assert "a model file of this run" in errors
        if target.name.startswith("in."):  # check's model files: the model and its side file
            code, errors = quietly(lambda target=target: check_main([str(source), "-q", "--report", str(target)]))
            assert code == 2, (target, errors)
        assert digests() == before


def test_ir3_models_with_damage_never_cause_an_internal_error(tmp_path):
    import onnx

    from models.graph_shapes import ir3

    source = tmp_path / "ir3.onnx"
    onnx.save(ir3(), source)
    assert not fuzz_commands(source.read_bytes(), tmp_path, seed=3)
