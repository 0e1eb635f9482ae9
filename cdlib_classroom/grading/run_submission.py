"""The process that runs ONE submission: ``python -m cdlib_classroom.grading.run_submission JOB_DIR``.

The grader starts it in its own session (process group), with a temporary
working folder as its current directory, and kills the whole group when the time
is up. It runs the selected cells in an IPython shell (magics, ``!`` commands
and ``sys.exit`` behave as in Jupyter), then calls the student's function on the
hidden cases the grader wrote to ``JOB_DIR/cases.pt`` and saves what came back —
values, gradients, errors — to ``JOB_DIR/outcomes.pt``. It judges nothing: the
grader compares the outcomes with its own reference computations in its own
process, where the student's code cannot reach them.

Two things watch for cdlib's own implementation while the student's function runs. Before any cell
runs, every function of the formula modules is MARKED (:mod:`.poison`): it returns its numbers times a
secret factor, so an answer that used it — by any route, from any thread — carries the factor, which the
grader finds by comparing the values in its own process. And a profile hook records the calls into the
forbidden modules (an alias, ``getattr``, a copied function object, cdlib's loss table), as does the
marking itself; that record is kept in this process, so it is evidence, not proof — the values are.
The classroom's own frames (this module calling the student's function) are never recorded: only a call
from outside the forbidden files into them is.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import threading
import time
from pathlib import Path

from ..outcome import describe_result, error_text
from .poison import Marks
from .sandbox import READY

PRELOAD = ("torch", "matplotlib.pyplot", "cdlib", "cdlib_classroom.checks", "cdlib.data", "cdlib.models",
           "cdlib.recipes", "cdlib.connectors", "cdlib.device", "cdlib.schedules", "cdlib.train", "cdlib.analysis")


def _stage(job: Path, text: str) -> None:
    tmp = job / "stage.tmp"
    tmp.write_text(text, encoding="utf8")
    os.replace(tmp, job / "stage.txt")  # the grader never reads a half-written stage


def preload() -> None:
    """Import what every exercise notebook imports, before the time limit starts: on a busy machine
    importing torch alone can take longer than a submission's own work."""
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - the notebook's own import will report it
            pass


def _save(obj, path: Path) -> None:
    import torch

    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------- running the cells


def _shell():
    from IPython.core.interactiveshell import InteractiveShell

    class GradingShell(InteractiveShell):
        def enable_gui(self, gui=None):  # no event loop here: plots are drawn off screen and not graded
            pass

    shell = GradingShell.instance(colors="nocolor")
    shell.ask_exit = lambda: setattr(shell, "exit_now", True)  # exit() / quit() in a cell
    # %matplotlib inline / widget / qt choose how plots show; plots are not graded, so keep Agg
    shell.register_magic_function(lambda line="": None, "line", "matplotlib")
    return shell


def run_cells(shell, cells, job: Path) -> dict:
    """Run the cells as "Run all" would, stopping at the first error; a status dict."""
    for cell in cells:
        _stage(job, f"running cell {cell['index'] + 1}")
        print(f"----- cell {cell['index'] + 1}", flush=True)
        result = shell.run_cell(cell["source"], store_history=False, silent=False)
        error = result.error_before_exec or result.error_in_exec
        if isinstance(error, SystemExit):
            return {"status": "sys_exit", "cell": cell["index"] + 1, "code": repr(error.code)}
        if shell.exit_now:
            return {"status": "sys_exit", "cell": cell["index"] + 1, "code": "exit()"}
        if error is not None:
            return {"status": "cell_error", "cell": cell["index"] + 1, "error": error_text(error)}
    return {"status": "ran"}


# ---------------------------------------------------------------------------- watching for forbidden calls


class CallWatch:
    """Records calls into code from the given modules' files while it is on.

    This file is never one of them, even when its package is forbidden: it calls the graded function, so a
    graded "function" that IS a forbidden one (``my_cd_loss = losses.cd_loss``) is called from here, and that
    call must count as the submission's, not as forbidden code calling itself."""

    OWN_FILE = os.path.abspath(__file__)

    def __init__(self, modules):
        self.prefixes = []
        self.names = {}
        for name in modules:
            module = importlib.import_module(name)
            path = os.path.abspath(module.__file__)
            if os.path.basename(path) == "__init__.py":
                path = os.path.dirname(path) + os.sep
                self.prefixes.append(path)
            else:
                self.prefixes.append(path)
            self.names[path] = name
        self.prefixes = tuple(self.prefixes)
        self.seen = set()
        self._owners = {}  # file name -> owning prefix or None: the hook runs on every Python call

    def _owner(self, filename: str):
        if filename not in self._owners:
            path = os.path.abspath(filename)
            self._owners[filename] = None if path == self.OWN_FILE else next(
                (p for p in self.prefixes if path == p or (p.endswith(os.sep) and path.startswith(p))), None)
        return self._owners[filename]

    def _hook(self, frame, event, arg):
        if event != "call":
            return
        code = frame.f_code
        owner = self._owner(code.co_filename)
        if owner is None:
            return
        caller = frame.f_back
        if caller is not None and self._owner(caller.f_code.co_filename) is not None:
            return  # forbidden code calling itself: only the entry point is worth naming
        module = self.names[owner]
        if owner.endswith(os.sep):
            rel = os.path.relpath(os.path.abspath(code.co_filename), owner)[: -len(".py")].replace(os.sep, ".")
            module = module if rel == "__init__" else f"{module}.{rel}"
        self.seen.add(f"{module}.{getattr(code, 'co_qualname', code.co_name)}")

    def __enter__(self):
        sys.setprofile(self._hook)
        threading.setprofile(self._hook)
        return self

    def __exit__(self, *exc):
        sys.setprofile(None)
        threading.setprofile(None)
        return False


# ---------------------------------------------------------------------------- calling the function


def _prepare(value, grad: bool):
    import torch

    if isinstance(value, torch.Tensor):
        out = value.clone()
        return out.requires_grad_(True) if grad and out.is_floating_point() else out
    if isinstance(value, list):
        return [_prepare(v, grad) for v in value]
    return value


def _leaves(value):
    import torch

    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, list):
        return [x for v in value for x in _leaves(v)]
    return []


def describe_module(module) -> dict:
    """An nn.Module as data: its leaf modules' names (for the feedback), every convolution and BatchNorm with
    their settings and weights (the output is judged from the student's own weights, the layers by what they
    do: a ReLU may be a module or F.relu in forward)."""
    from torch import nn

    leaves = [m for m in module.modules() if not list(m.children())]
    out = {"layers": [type(m).__name__ for m in leaves], "convs": [], "bns": []}
    for conv in (m for m in module.modules() if isinstance(m, nn.Conv2d)):
        padding = conv.padding if isinstance(conv.padding, str) else [int(p) for p in conv.padding]
        out["convs"].append({
            "weight": conv.weight.detach().double().clone(),
            "bias": None if conv.bias is None else conv.bias.detach().double().clone(),
            "kernel_size": list(conv.kernel_size), "stride": list(conv.stride), "padding": padding,
            "dilation": list(conv.dilation), "groups": int(conv.groups), "in": conv.in_channels,
            "out": conv.out_channels})
    for bn in (m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)):
        out["bns"].append({"type": type(bn).__name__, "eps": float(bn.eps), "affine": bool(bn.affine),
                           "features": bn.num_features})
    return out


def call_module_case(cls, case, watch: CallWatch) -> dict:
    """Build ``cls(*args)``, put it in training mode and run it on the case's input."""
    import torch

    x = case["input"].clone().requires_grad_(True)
    try:
        with watch, torch.enable_grad():
            module = cls(*case["args"])
            module.train()
            value = module(x)
    except NotImplementedError as exc:
        return {"id": case["id"], "error": error_text(exc), "not_implemented": True}
    except SystemExit as exc:
        return {"id": case["id"], "error": f"SystemExit (it calls sys.exit({exc.code!r}))"}
    except Exception as exc:  # noqa: BLE001
        return {"id": case["id"], "error": error_text(exc)}
    out = describe_result(value, [x])
    out.update(id=case["id"], module=describe_module(module) if isinstance(module, torch.nn.Module) else None)
    return out


def call_case(fn, case, watch: CallWatch) -> dict:
    import torch

    if case.get("kind") == "module":
        return call_module_case(fn, case, watch)
    grad = set(case.get("grad", ()))
    args = [_prepare(a, i in grad) for i, a in enumerate(case["args"])]
    kwargs = dict(case.get("kwargs", {}))
    grad_inputs = [x for i in sorted(grad) for x in _leaves(args[i]) if x.requires_grad]
    before = [x.detach().clone() for x in _leaves(args)]
    start = time.perf_counter()
    try:
        with watch, torch.enable_grad():  # grading the function, not a notebook that turned autograd off
            value = fn(*args, **kwargs)
    except NotImplementedError as exc:
        return {"id": case["id"], "error": error_text(exc), "not_implemented": True}
    except SystemExit as exc:  # the function itself calls sys.exit: a wrong answer, not the end of grading
        return {"id": case["id"], "error": f"SystemExit (it calls sys.exit({exc.code!r}))"}
    except Exception as exc:  # noqa: BLE001 - every error is part of the grade
        return {"id": case["id"], "error": error_text(exc)}
    out = describe_result(value, grad_inputs)
    out["id"] = case["id"]
    out["seconds"] = time.perf_counter() - start
    after = _leaves(args)
    out["modified"] = any(not torch.equal(b, a.detach()) for b, a in zip(before, after))
    return out


def run_public_check(namespace: dict, exercise_name: str) -> dict:
    """The exercise's public checks (exercise 5 has two) on the graded functions, for the feedback:
    "passed" or their messages."""
    from ..checking import CheckFailed
    from ..exercises import exercise

    messages, status = [], "passed"
    for name, check in exercise(exercise_name).public_checks():
        fn = namespace.get(name)
        if not callable(fn):
            messages.append(f"{name}: not checked, the notebook does not define it")
            status = "error"
            continue
        try:
            check(fn)
        except CheckFailed as exc:
            messages.append(str(exc))
            status = "failed" if status == "passed" else status
        except Exception as exc:  # noqa: BLE001
            messages.append(f"{name}: {error_text(exc)}")
            status = "error"
    return {"status": status, "message": "\n".join(messages)}


def main(job_dir: str) -> int:
    job = Path(job_dir)
    spec = json.loads((job / "job.json").read_text(encoding="utf8"))
    import torch

    cases = torch.load(job / "cases.pt", weights_only=True)
    preload()
    watch = CallWatch(spec["forbidden_modules"])  # files known before any student code runs
    marks = Marks(spec["factor"])  # before any student code runs, see .poison
    (job / "job.json").unlink()  # the factor is the grader's secret: no cell needs to read it
    shell = _shell()
    _stage(job, READY)
    status = run_cells(shell, spec["cells"], job)
    if status["status"] != "ran":
        (job / "status.json").write_text(json.dumps(status), encoding="utf8")
        return 0
    outcomes = []
    for case in cases:
        name = case.get("function", spec["function"])
        fn = shell.user_ns.get(name)
        if not callable(fn):
            outcomes.append({"id": case["id"], "error": f"{name} is not defined by the notebook (found {type(fn).__name__})"})
            continue
        _stage(job, f"calling {name} on hidden case {case['id']}")
        marks.grading = True
        try:
            outcomes.append(call_case(fn, case, watch))
        finally:
            marks.grading = False
    _save({"outcomes": outcomes, "forbidden_calls": sorted(watch.seen | marks.entered)}, job / "outcomes.pt")
    marks.remove()  # the public check compares with cdlib's real answers
    _stage(job, "running the public check")
    public = run_public_check(shell.user_ns, spec["exercise"])
    (job / "public.json").write_text(json.dumps(public), encoding="utf8")
    (job / "status.json").write_text(json.dumps(status), encoding="utf8")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("MPLBACKEND", "Agg")
    sys.exit(main(sys.argv[1]))
