"""Issue 21's grader fixes, end to end and in process: the six ways around the cheat detection now score 0
or are flagged for review; feedback per assignment; memory and output limits; Ctrl-C and setsid children;
correct connector variants accepted; a mistake costs only the questions it breaks; the attention check wants a
real gradient."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cdlib.errors import DataError
from cdlib_classroom import connector
from cdlib_classroom.checking import CheckFailed
from cdlib_classroom.exercises import exercise
from cdlib_classroom.grading import grade, grader, run_submission

REPO = Path(__file__).resolve().parents[1]
INSTRUCTOR = REPO / "notebooks" / "exercises"
TIMEOUT = 60.0


def _notebook(assignment: str, answer: str) -> dict:
    """The instructor notebook with the graded cell's source replaced by ``answer``."""
    nb = json.loads((INSTRUCTOR / f"{assignment}.ipynb").read_text(encoding="utf8"))
    task = exercise(assignment)
    at = next(i for i, c in enumerate(nb["cells"]) if f"def {task.function}(" in "".join(c["source"]))
    nb["cells"][at]["source"] = answer
    return nb


def _write(folder: Path, name: str, nb: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.ipynb").write_text(json.dumps(nb), encoding="utf8")


EVASIONS_CD = {
    "bench_step": '''import torch.nn as nn
from cdlib_bench.steps import ReferenceStyleStep

class _Same(nn.Module):
    def forward(self, x):
        return x

def my_cd_loss(student_feats, teacher_feats):
    step = ReferenceStyleStep.__new__(ReferenceStyleStep)
    step.connectors = [_Same() for _ in student_feats]
    return step._loss("cd", student_feats[0].new_zeros(()), student_feats, None, teacher_feats, None)
''',
    "thread": '''import queue
import threading
from cdlib import losses as _L

_ask, _answer = queue.Queue(), queue.Queue()

def _serve():
    while True:
        _answer.put(_L.cd_loss(*_ask.get()))

threading.Thread(target=_serve, daemon=True).start()

def my_cd_loss(student_feats, teacher_feats):
    _ask.put((student_feats, teacher_feats))
    return _answer.get()
''',
    "profile_off": '''import sys
from cdlib import losses
_f = getattr(losses, "cd_" + "loss")

def my_cd_loss(student_feats, teacher_feats):
    sys.setprofile(None)
    return _f(student_feats, teacher_feats)
''',
    "exec_source": '''import inspect
import cdlib.losses as _m
exec(inspect.getsource(_m))

def my_cd_loss(student_feats, teacher_feats):
    return cd_loss(student_feats, teacher_feats)
''',
    "forged_outcomes": '''import gc
from cdlib import losses as _L

def _forge():
    for o in gc.get_objects():
        if isinstance(o, dict) and "call_case" in o and "CallWatch" in o:
            real = o["call_case"]

            class _Blind:
                def __enter__(self):
                    return self

                def __exit__(self, *exc):
                    return False

            o["call_case"] = lambda fn, case, watch: real(lambda *a, **k: _L.cd_loss(*a, **k), case, _Blind())

_forge()

def my_cd_loss(student_feats, teacher_feats):
    return None
''',
}
DEEPCOPY_CONNECTOR = '''import copy
from cdlib.connectors import Connector

def MyConnector(in_channels, out_channels):
    return copy.deepcopy(Connector(in_channels, out_channels))
'''


def _totals(path: Path) -> dict:
    with open(grader.totals_path(path), newline="", encoding="utf8") as f:
        return {r["submission"]: (float(r["points"]), r["review"]) for r in csv.DictReader(f)}


@pytest.mark.slow
def test_six_evasions_score_zero_or_are_flagged_and_a_folder_of_six_takes(tmp_path):
    folder = tmp_path / "ex1"
    for name, source in EVASIONS_CD.items():
        _write(folder, name, _notebook("exercise1_cd_loss", source))
    _write(folder, "honest", json.loads((INSTRUCTOR / "exercise1_cd_loss.ipynb").read_text(encoding="utf8")))
    start = time.perf_counter()
    grades = grade("exercise1_cd_loss", folder, out=tmp_path / "ex1.csv", timeout=TIMEOUT)
    seconds = time.perf_counter() - start
    totals = _totals(tmp_path / "ex1.csv")
    print(f"\na folder of 6 exercise-1 notebooks graded in {seconds:.0f} s: {totals}")
    assert totals["honest"] == (10.0, "")
    for name in ("bench_step", "thread", "profile_off", "forged_outcomes"):
        assert totals[name][0] == 0, (name, totals[name])
    assert totals["exec_source"][1] and "exec" in totals["exec_source"][1]  # flagged for review
    assert "thread" in totals["thread"][1] or "threading" in totals["thread"][1]
    by_name = {g.submission: g for g in grades}
    assert "carry the mark" in by_name["thread"].verdicts[0].diagnosis
    assert "cdlib_bench.steps" in by_name["bench_step"].verdicts[0].diagnosis

    ex5 = tmp_path / "ex5"
    nb = json.loads((INSTRUCTOR / "exercise5_connector.ipynb").read_text(encoding="utf8"))
    at = next(i for i, c in enumerate(nb["cells"]) if "class MyConnector" in "".join(c["source"]))
    nb["cells"][at]["source"] = DEEPCOPY_CONNECTOR
    _write(ex5, "deepcopy", nb)
    grade("exercise5_connector", ex5, out=tmp_path / "ex5.csv", timeout=TIMEOUT)
    assert _totals(tmp_path / "ex5.csv")["deepcopy"][0] == 0


@pytest.mark.slow
def test_memory_and_output_limits_and_feedback_per_assignment(tmp_path):
    folder = tmp_path / "subs"
    right = ("def my_cd_loss(s, t):\n"
             "    return sum(((a.mean((2, 3)) - b.mean((2, 3))) ** 2).mean() for a, b in zip(s, t))\n")
    _write(folder, "hog", _notebook("exercise1_cd_loss", "import torch\n_big = torch.ones(400_000_000)\n" + right))
    _write(folder, "chatty", _notebook("exercise1_cd_loss", "while True:\n    print('x' * 1000)\n" + right))
    grades = {g.submission: g for g in grade("exercise1_cd_loss", folder, out=tmp_path / "grades" / "ex1.csv",
                                             timeout=TIMEOUT, max_memory_gb=1.0, max_output_mb=2.0)}
    assert "more than 1 GB of memory" in grades["hog"].verdicts[0].diagnosis
    assert "printed more than 2 MB" in grades["chatty"].verdicts[0].diagnosis
    assert (tmp_path / "grades" / "feedback" / "exercise1_cd_loss" / "hog.md").is_file()
    assert (tmp_path / "grades" / "written" / "exercise1_cd_loss.md").is_file()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


@pytest.mark.slow
def test_ctrl_c_writes_partial_grades_and_kills_setsid_children(tmp_path):
    folder, pid_file = tmp_path / "subs", tmp_path / "escaped.pid"
    escape = (f"import subprocess\nhelper = subprocess.Popen(['setsid', 'sleep', '600'])\n"
              f"open({str(pid_file)!r}, 'w').write(str(helper.pid))\n"
              "def my_cd_loss(s, t):\n    while True:\n        pass\n")
    _write(folder, "a_right", json.loads((INSTRUCTOR / "exercise1_cd_loss.ipynb").read_text(encoding="utf8")))
    _write(folder, "b_escapes", _notebook("exercise1_cd_loss", escape))
    _write(folder, "c_later", _notebook("exercise1_cd_loss", escape))
    out = tmp_path / "grades.csv"
    proc = subprocess.Popen([sys.executable, "-m", "cdlib", "grade", "exercise1_cd_loss", str(folder),
                             "--out", str(out), "--timeout", "300"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # (a test run started in the background inherits SIGINT ignored; a terminal's Ctrl-C is not)
    deadline = time.time() + 240
    while not pid_file.is_file() and time.time() < deadline:
        time.sleep(0.5)
    assert pid_file.is_file(), "the second notebook never started"
    time.sleep(1.0)
    escaped = int(pid_file.read_text())
    started = time.time()
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert time.time() - started < 30
    assert proc.returncode == 130, stderr
    assert "stopped by Ctrl-C: 1 of 3" in stderr and "--resume" not in stderr
    assert set(_totals(out)) == {"a_right"}
    time.sleep(0.5)
    assert not _alive(escaped)


def test_a_file_is_not_a_folder(tmp_path):
    path = tmp_path / "one.ipynb"
    path.write_text("{}", encoding="utf8")
    with pytest.raises(DataError, match="is a file; cdlib grade takes a FOLDER"):
        grade("exercise1_cd_loss", path, out=tmp_path / "g.csv")


def test_lms_file_names_map_to_ids(tmp_path):
    for rel in ("smithjane_12345_999_exercise2.ipynb", "doejohn_LATE_67890_998_exercise2.ipynb"):
        (tmp_path / rel).write_text("{}", encoding="utf8")
    found = grader.find_submissions(tmp_path, r"_(?:LATE_)?(?P<id>\d+)_\d+_")
    assert [i for i, _ in found] == ["12345", "67890"]
    with pytest.raises(DataError, match="finds no student id"):
        grader.find_submissions(tmp_path, r"^(?P<id>x\d+)")


# ============================================================================ in process


def _score(assignment: str, **graded) -> dict:
    task = exercise(assignment)
    cases = task.hidden_cases()
    watch = run_submission.CallWatch(())
    outcomes = [run_submission.call_case(graded[c.get("function", task.function)], grader.case_inputs(c), watch)
                for c in cases]
    return {v.question: v.points for v in task.score(cases, outcomes)}


def _kd(s, t, T, factor=True):
    log_q, log_p = F.log_softmax(s / T, 1), F.log_softmax(t / T, 1)
    return (log_p.exp() * (log_p - log_q)).sum(1).mean() * (T * T if factor else 1)


def _gkd(s, t, y, temperature=1.0, reduce="mean"):
    kept = (t.argmax(1) == y).float()
    log_q, log_p = F.log_softmax(s / temperature, 1), F.log_softmax(t / temperature, 1)
    kl = (log_p.exp() * (log_p - log_q)).sum(1) * kept * temperature ** 2
    return kl.sum() / kept.sum().clamp_min(1) if reduce == "mean" else kl.sum()


def test_a_wrong_formula_does_not_also_cost_stability():
    assert _score("exercise4_kd_loss", my_kd_loss=lambda s, t, T: _kd(s, t, T, factor=False)) == {
        "value_t1": 2, "temperature": 0, "gradient": 0, "stability": 2}
    assert _score("exercise2_gkd_loss", my_gkd_loss=lambda s, t, y, temperature=1.0: _gkd(s, t, y, temperature, "sum")
                  )["stability"] == 1
    def unstable(s, t, T):
        p, q = F.softmax(t / T, 1), F.softmax(s / T, 1)
        return (p * (p.log() - q.log())).sum(1).mean() * T * T

    assert _score("exercise4_kd_loss", my_kd_loss=unstable)["stability"] == 0


class ReluInForward(nn.Module):
    def __init__(self, c_in, c_out, bias=False, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size=1, bias=bias, padding=padding)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def test_connectors_are_judged_by_behaviour():
    attention = lambda x: x.mean(dim=(2, 3))  # noqa: E731
    full = {"attention_value": 3, "attention_gradient": 1, "connector_layers": 3, "connector_output": 3}
    assert _score("exercise5_connector", my_channel_attention=attention, MyConnector=ReluInForward) == full
    same = lambda i, o: ReluInForward(i, o, padding="same")  # noqa: E731
    assert _score("exercise5_connector", my_channel_attention=attention, MyConnector=same) == full
    connector.check_connector(same, verbose=False)
    biased = lambda i, o: ReluInForward(i, o, bias=True)  # noqa: E731
    assert _score("exercise5_connector", my_channel_attention=attention, MyConnector=biased) == {
        **full, "connector_layers": 0}
    no_relu = lambda i, o: nn.Sequential(nn.Conv2d(i, o, 1, bias=False), nn.BatchNorm2d(o))  # noqa: E731
    assert _score("exercise5_connector", my_channel_attention=attention, MyConnector=no_relu) == {
        **full, "connector_output": 0}


def test_the_attention_check_wants_a_real_gradient():
    def rebuilt(x):
        return torch.tensor(x.mean(dim=(2, 3)).tolist(), requires_grad=True)

    with pytest.raises(CheckFailed, match="gradients don't flow back"):
        connector.check_channel_attention(rebuilt, verbose=False)
    connector.check_channel_attention(lambda x: x.mean(dim=(2, 3)), verbose=False)


def test_exercise5_runs_both_public_checks():
    names = [name for name, _ in exercise("exercise5_connector").public_checks()]
    assert names == ["my_channel_attention", "MyConnector"]
    public = run_submission.run_public_check({"my_channel_attention": lambda x: x.mean(dim=(2, 3)),
                                              "MyConnector": lambda i, o: nn.Sequential(nn.Conv2d(i, o, 1))},
                                             "exercise5_connector")
    assert public["status"] == "failed" and "check_connector" in public["message"]


def test_marks_follow_every_route_and_come_off():
    from cdlib import losses
    from cdlib.connectors import Connector
    from cdlib_classroom.grading.poison import Marks

    s, t = [torch.randn(2, 3, 4, 4)], [torch.randn(2, 3, 4, 4)]
    right = float(losses.cd_loss(s, t))
    marks = Marks(1.02)
    try:
        assert float(losses.cd_loss(s, t)) == pytest.approx(right * 1.02)
        x = torch.randn(2, 3, 4, 4)
        c = Connector(3, 5).train()
        plain = nn.Sequential(*c.children())
        assert torch.allclose(c(x), plain(x) * 1.02)
    finally:
        marks.remove()
    assert float(losses.cd_loss(s, t)) == pytest.approx(right)
    assert "forward" not in vars(Connector)
    assert os.path.basename(losses.cd_loss.__code__.co_filename) == "losses.py"
