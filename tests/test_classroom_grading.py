"""cdlib_classroom.grading: hidden-case grading of the exercise notebooks (`cdlib grade`).

The end-to-end tests build folders of submissions from the instructor notebooks
(one answer cell replaced) and the generated student copies, run the grader on
them in child processes and check every row of grades.csv. The in-process tests
check the pieces: the exercise records' hidden cases and questions, the watch
for forbidden calls, the static check, and that cdlib reaches the grader only
through its entry point.
"""

from __future__ import annotations

import ast
import copy
import csv
import importlib.metadata
import importlib.util
import json
import math
import os
import time
from pathlib import Path

import pytest

from cdlib import connectors, losses
from cdlib.errors import ConfigError
from cdlib_classroom import cd_loss, connector, edt_schedule, gkd_loss, kd_loss, references
from cdlib_classroom.exercises import EXERCISES
from cdlib_classroom.grading import GradingError, grade, graded_exercise, grader, notebook, run_submission
from cdlib_classroom.record import Exercise

CD, GKD, SCHEDULE, KD, CONNECTOR = (cd_loss.EXERCISE, gkd_loss.EXERCISE, edt_schedule.EXERCISE, kd_loss.EXERCISE,
                                    connector.EXERCISE)

REPO = Path(__file__).resolve().parent.parent
INSTRUCTOR = REPO / "notebooks" / "exercises"
STUDENT = REPO / "exercises" / "student"
TIMEOUT = 45.0  # generous for a loaded 2-core machine: a normal submission takes about 4 s


def _submission(assignment: str, answer: str | None = None, extra_cells=(), before_answer=()) -> dict:
    """The instructor notebook of ``assignment`` with its answer cell's source replaced by ``answer``."""
    nb = json.loads((INSTRUCTOR / f"{assignment}.ipynb").read_text(encoding="utf8"))
    nb = copy.deepcopy(nb)
    fn = graded_exercise(assignment).function
    at = next(i for i, c in enumerate(nb["cells"]) if f"def {fn}(" in "".join(c["source"]))
    if answer is not None:
        nb["cells"][at]["source"] = answer
    code = lambda src: {"cell_type": "code", "metadata": {}, "source": src, "outputs": [], "execution_count": None}  # noqa: E731
    nb["cells"][at:at] = [code(s) for s in before_answer]
    nb["cells"] += [code(s) for s in extra_cells]
    return nb


def _write(folder: Path, name: str, nb: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.ipynb").write_text(json.dumps(nb), encoding="utf8")


def _rows(path: Path) -> dict:
    with open(path, newline="", encoding="utf8") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["submission", "question", "points", "max_points", "diagnosis"]
    out: dict = {}
    for r in rows:
        out.setdefault(r["submission"], {})[r["question"]] = (float(r["points"]), float(r["max_points"]), r["diagnosis"])
    return out


def _gone(pid: int, within: float = 10.0) -> bool:
    """Whether process ``pid`` has ended (a zombie awaiting its reaper counts as ended)."""
    deadline = time.time() + within
    while time.time() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        except FileNotFoundError:
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.2)
    return False


# ============================================================================ end to end

CD_WRONG_SUM = '''def my_cd_loss(student_feats, teacher_feats):
    total = 0
    for s, t in zip(student_feats, teacher_feats):
        total = total + ((s.mean(dim=(2, 3)) - t.mean(dim=(2, 3))) ** 2).sum()  # sum, not mean
    return total
'''
CD_CALLS_CDLIB = '''from cdlib import losses as L

def my_cd_loss(student_feats, teacher_feats):
    return L.cd_loss(student_feats, teacher_feats)
'''
CD_HIDDEN_CALL = '''import importlib

def my_cd_loss(student_feats, teacher_feats):
    module = importlib.import_module("cdlib." + "losses")
    return getattr(module, "cd" + "_loss")(student_feats, teacher_feats)
'''
CD_SYS_EXIT = '''import sys
sys.exit("I give up")

def my_cd_loss(student_feats, teacher_feats):
    return 0
'''
CD_CRASHES = '''def my_cd_loss(student_feats, teacher_feats):
    return sum(((s.mean((2, 3)) - t.mean((2, 3))) ** 2).mean() for s, t in zip(student_feats, teacher_feats))

print(undefined_name)
'''


def _cd_never_ends(pid_file: Path) -> str:
    return f'''import subprocess
helper = subprocess.Popen(["sleep", "600"])  # must die with the notebook's process group
open({str(pid_file)!r}, "w").write(str(helper.pid))

def my_cd_loss(student_feats, teacher_feats):
    while True:
        pass
'''


@pytest.mark.slow
def test_grades_seven_kinds_of_cd_submission(tmp_path):
    subs = tmp_path / "subs"
    pid_file = tmp_path / "helper.pid"
    # cells after the answer (the public check, experiments) are not run: this one would crash the notebook
    _write(subs, "right", _submission("exercise1_cd_loss", extra_cells=["raise RuntimeError('never run')"]))
    _write(subs, "wrong_sum", _submission("exercise1_cd_loss", CD_WRONG_SUM))
    _write(subs, "calls_cdlib", _submission("exercise1_cd_loss", CD_CALLS_CDLIB))
    _write(subs, "hidden_call", _submission("exercise1_cd_loss", CD_HIDDEN_CALL))
    (subs / "blank.ipynb").write_text((STUDENT / "exercise1_cd_loss.ipynb").read_text(encoding="utf8"), encoding="utf8")
    _write(subs, "crashes", _submission("exercise1_cd_loss", CD_CRASHES))
    _write(subs, "sys_exit", _submission("exercise1_cd_loss", CD_SYS_EXIT))
    _write(subs, "never_ends", _submission("exercise1_cd_loss", _cd_never_ends(pid_file)))
    timeout = 20.0
    grades = grade("exercise1_cd_loss", subs, out=tmp_path / "grades.csv", timeout=timeout, jobs=2)
    rows = _rows(tmp_path / "grades.csv")
    questions = ["output", "value_same_size", "value_mixed_sizes", "gradient"]
    assert sorted(rows) == sorted(p.stem for p in subs.glob("*.ipynb"))
    for name, per_question in rows.items():
        assert list(per_question) == questions, name
        assert [m for _, m, _ in per_question.values()] == [2, 3, 3, 2]

    assert all(p == m and d == "right" for p, m, d in rows["right"].values())
    wrong = rows["wrong_sum"]
    assert wrong["output"][:2] == (2, 2)
    for q in ("value_same_size", "value_mixed_sizes", "gradient"):
        assert wrong[q][0] == 0
    assert "the loss is" in wrong["value_same_size"][2]
    assert "summed" in wrong["value_same_size"][2]  # the public check's diagnosis of the mistake, as a hint

    def zero(name, *phrases):
        for points, _, diagnosis in rows[name].values():
            assert points == 0, (name, diagnosis)
            for phrase in phrases:
                assert phrase in diagnosis, (name, diagnosis)

    zero("calls_cdlib", "cdlib's own implementation", "cdlib.losses.cd_loss", "in its source", "when it ran")
    zero("hidden_call", "cdlib.losses.cd_loss", "when it ran")
    assert "in its source" not in rows["hidden_call"]["output"][2]  # a name built at run time: only the watch sees it
    zero("blank", "not implemented")
    zero("crashes", "crashes", "NameError", "undefined_name")
    zero("sys_exit", "sys.exit", "I give up")
    zero("never_ends", f"did not finish within {timeout:g} s", "calling my_cd_loss on hidden case cd-1")
    assert _gone(int(pid_file.read_text())), "a process the notebook started outlived its grading"

    by_name = {g.submission: g for g in grades}
    assert by_name["right"].points == 10 and by_name["wrong_sum"].points == 2
    feedback = (tmp_path / "feedback" / "exercise1_cd_loss" / "wrong_sum.md").read_text(encoding="utf8")
    assert "2 / 10 points" in feedback and "check_cd_loss found" in feedback
    assert "undefined_name" in (tmp_path / "feedback" / "exercise1_cd_loss" / "crashes.md").read_text(encoding="utf8")


GKD_NO_T2 = '''import torch.nn.functional as F

def my_gkd_loss(student_logits, teacher_logits, targets, temperature=1.0):
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits / temperature, dim=1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1)
    kept = (teacher_logits.argmax(dim=1) == targets).float()
    return (kl * kept).sum() / kept.sum().clamp_min(1)  # forgot temperature ** 2
'''
SCHEDULE_FIXED_MILESTONES = '''def my_weights(epoch, epochs):
    # the paper's 200-epoch CIFAR staircase, hard-coded
    k = (epoch >= 60) + (epoch >= 160)
    warm = epoch <= 60
    return {"ce": 0.0 if warm else 1.0, "cd": 6 * 0.9 ** k, "gkd": 0.0 if warm else 0.1}
'''


@pytest.mark.slow
def test_grades_right_and_wrong_gkd_and_schedule(tmp_path):
    subs = tmp_path / "gkd"
    _write(subs, "right", _submission("exercise2_gkd_loss", before_answer=["%matplotlib widget\n!echo a shell command"]))
    _write(subs, "no_t2", _submission("exercise2_gkd_loss", GKD_NO_T2))
    grade("exercise2_gkd_loss", subs, out=tmp_path / "gkd.csv", timeout=TIMEOUT, jobs=2)
    rows = _rows(tmp_path / "gkd.csv")
    assert all(p == m and d == "right" for p, m, d in rows["right"].values())
    wrong = {q: p for q, (p, _, _) in rows["no_t2"].items()}
    assert wrong == {"value_t1": 3, "temperature": 0, "all_wrong": 2, "gradient": 0, "stability": 1}
    assert "temperature=2.5" in rows["no_t2"]["temperature"][2]

    subs = tmp_path / "schedule"
    _write(subs, "right", _submission("exercise3_edt_schedule"))
    _write(subs, "fixed", _submission("exercise3_edt_schedule", SCHEDULE_FIXED_MILESTONES))
    grade("exercise3_edt_schedule", subs, out=tmp_path / "schedule.csv", timeout=TIMEOUT, jobs=2)
    rows = _rows(tmp_path / "schedule.csv")
    assert all(p == m and d == "right" for p, m, d in rows["right"].values())
    fixed = rows["fixed"]
    assert {q: p for q, (p, _, _) in fixed.items()} == {"answers": 2, "starts_at_6": 2, "decays": 0, "labels_on": 0}
    assert "7-epoch run" in fixed["decays"][2] and "never decays" in fixed["decays"][2]


# ============================================================================ in-process pieces


@pytest.mark.parametrize("task", [CD, GKD, KD], ids=lambda e: e.name)
def test_hidden_answers_are_cdlib_losses_in_float64(task):
    """The right answers of the hidden cases are cdlib.losses' own, computed in float64 (references.answer), and
    agree with cdlib.losses on the float32 inputs the submission gets."""
    loss = {CD.name: losses.cd_loss, GKD.name: losses.gkd_loss, KD.name: losses.kd_loss}[task.name]
    for case in task.hidden_cases():
        kwargs = case.get("kwargs", {})
        lib = loss(*case["args"], **kwargs)
        mine, _ = references.answer(loss, case["args"], kwargs)
        assert float(mine) == pytest.approx(float(lib), rel=1e-5, abs=1e-9), case["id"]
        assert float(mine) == pytest.approx(case["want"], rel=1e-12, abs=1e-15)
        assert "want" not in grader.case_inputs(case) and "want_grads" not in grader.case_inputs(case)


def test_hidden_cases_differ_from_the_public_check():
    stage_counts = {len(c["args"][0]) for c in CD.hidden_cases()}
    assert {1, 5} <= stage_counts  # the public check tries 1, 2, 3 and 4
    assert any(s.shape[2:] != t.shape[2:] for c in CD.hidden_cases() for s, t in zip(*c["args"]))
    temperatures = {c["kwargs"].get("temperature", 1.0) for c in GKD.hidden_cases()}
    assert {2.5, 0.5} <= temperatures and 4.0 not in temperatures  # the public check uses 1 and 4
    assert {c["epochs"] for c in SCHEDULE.hidden_cases()} == {7, 45, 200}  # the notebook checks 30
    assert not {c["args"][2] for c in KD.hidden_cases()} & {2.0, 2.5, 4.0}  # check_kd_loss's temperatures but 1


def _score_in_process(task: Exercise, fn, **others) -> tuple:
    """Call ``fn`` (and ``others``, by name) on the hidden cases as the submission's process does, without a
    child process: (points per question, the forbidden functions it reached)."""
    cases = task.hidden_cases()
    watch = run_submission.CallWatch(task.forbidden_modules)
    graded = {task.function: fn, **others}
    outcomes = [run_submission.call_case(graded[c.get("function", task.function)], grader.case_inputs(c), watch)
                for c in cases]
    return {v.question: v.points for v in task.score(cases, outcomes)}, watch.seen


def test_scores_common_schedule_mistakes():
    def counts_from_zero(epoch, epochs):
        return {"ce": 1.0, "cd": 6.0 * 0.95 ** epoch, "gkd": 0.1}

    def rises(epoch, epochs):
        return {"ce": 1.0, "cd": 6.0 + (epoch > epochs / 2) - 2 * (epoch > 0.9 * epochs), "gkd": 0.1}

    def wrong_key(epoch, epochs):
        return {"CE": 1.0, "cd": 6.0 / epoch, "gkd": 0.1}

    def int_only(epoch, epochs):
        return {"ce": 1.0, "cd": [6.0, 3.0][epoch > epochs // 2] if isinstance(epoch, int) else None, "gkd": 0.1}

    points, _ = _score_in_process(SCHEDULE, counts_from_zero)
    assert points == {"answers": 2, "starts_at_6": 0, "decays": 4, "labels_on": 2}
    assert _score_in_process(SCHEDULE, rises)[0]["decays"] == 0
    assert _score_in_process(SCHEDULE, wrong_key)[0] == {"answers": 0, "starts_at_6": 0, "decays": 0, "labels_on": 0}
    assert _score_in_process(SCHEDULE, int_only)[0]["answers"] == 0


def test_scores_common_loss_mistakes():
    def returns_float(s, t):
        return sum(((a.mean((2, 3)) - b.mean((2, 3))) ** 2).mean() for a, b in zip(s, t)).item()

    def four_stages_assumed(s, t):
        return sum(((s[k].mean((2, 3)) - t[k].mean((2, 3))) ** 2).mean() for k in range(min(4, len(s))))

    def nan_when_none_kept(s, t, y, temperature=1.0):
        kept = (t.argmax(1) == y).float()
        kl = (t.softmax(1) * (t.log_softmax(1) - s.log_softmax(1))).sum(1)
        return (kl * kept).sum() / kept.sum() * temperature ** 2

    assert _score_in_process(CD, returns_float)[0] == {"output": 0, "value_same_size": 3, "value_mixed_sizes": 3,
                                                       "gradient": 0}
    assert _score_in_process(CD, four_stages_assumed)[0] == {"output": 2, "value_same_size": 3,
                                                             "value_mixed_sizes": 0, "gradient": 0}
    assert _score_in_process(GKD, nan_when_none_kept)[0]["all_wrong"] == 0

    def kd(s, t, T, factor=True):
        log_q, log_p = (s.float() / T).log_softmax(1), (t.float() / T).log_softmax(1)
        return (log_p.exp() * (log_p - log_q)).sum(1).mean() * (T ** 2 if factor else 1)

    assert _score_in_process(KD, kd)[0] == {"value_t1": 2, "temperature": 3, "gradient": 3, "stability": 2}
    assert _score_in_process(KD, lambda s, t, T: kd(s, t, T, factor=False))[0] == {
        "value_t1": 2, "temperature": 0, "gradient": 0, "stability": 2}  # a formula mistake costs no stability

    def exits(s, t, y, temperature=1.0):
        raise SystemExit(1)

    cases = GKD.hidden_cases()
    outcome = run_submission.call_case(exits, grader.case_inputs(cases[0]), run_submission.CallWatch(()))
    assert "calls sys.exit(1)" in outcome["error"]


def test_the_watch_sees_cdlib_however_it_is_reached():
    table = {"cd": losses.cd_loss}
    _, seen = _score_in_process(CD, lambda s, t: table["cd"](s, t) * 1.0)
    assert seen == {"cdlib.losses.cd_loss"}
    _, seen = _score_in_process(CD, lambda s, t: sum(((a.mean((2, 3)) - b.mean((2, 3))) ** 2).mean()
                                                      for a, b in zip(s, t)))
    assert seen == set()


def test_the_watch_sees_a_graded_name_bound_to_a_forbidden_function_and_the_classroom():
    _, seen = _score_in_process(CD, losses.cd_loss)  # my_cd_loss = losses.cd_loss: called by the grader itself
    assert seen == {"cdlib.losses.cd_loss"}
    _, seen = _score_in_process(CD, lambda s, t: references.answer(losses.cd_loss, [s, t])[0].float())
    assert seen == {"cdlib_classroom.references.answer"}


def _cells(*sources):
    return [notebook.Cell(i, s) for i, s in enumerate(sources)]


def test_static_check_resolves_aliases_and_helpers():
    forbidden = CD.forbidden_modules
    uses = lambda *src: notebook.static_uses(_cells(*src), "my_cd_loss", forbidden)  # noqa: E731
    assert uses("from cdlib import losses as L", "def my_cd_loss(s, t):\n    return L.cd_loss(s, t)") == \
        ["cdlib.losses.cd_loss"]
    assert uses("import cdlib.losses", "def my_cd_loss(s, t):\n    return cdlib.losses.channel_attention(s[0]).sum()") \
        == ["cdlib.losses.channel_attention"]
    assert uses("from cdlib.losses import cd_loss as ref\nf = ref", "def helper(s, t):\n    return f(s, t)",
                "def my_cd_loss(s, t):\n    return helper(s, t)") == ["cdlib.losses.cd_loss"]
    assert uses("from cdlib.losses import *", "def my_cd_loss(s, t):\n    return cd_loss(s, t)") == ["cdlib.losses.cd_loss"]
    assert uses("%matplotlib inline\nfrom cdlib import losses",
                "def my_cd_loss(s, t):\n    d = {}\n    return d.get('x', 0)",
                "print(losses.cd_loss)") == []  # cdlib used outside the answer is fine


def test_cells_to_run_stop_at_the_answer_and_skip_the_setup_cell():
    cells = _cells("# Setup: installs cdlib where it is missing\nimport os", "x = 1", "def f():\n    pass",
                   "check(f)", "checks.check_cd_loss(f)", "def f():\n    return 1", "long_training()")
    assert [c.index for c in notebook.cells_to_run(cells, "f")] == [1, 2, 3, 5]
    assert notebook.cells_to_run(cells, "g") is None


def test_points_come_from_the_instructor_notebook_metadata(tmp_path):
    nb = json.loads((INSTRUCTOR / "exercise1_cd_loss.ipynb").read_text(encoding="utf8"))
    nb["metadata"]["cdlib"] = {"grading": {"points": {"gradient": 5, "output": 0}}}
    path = tmp_path / "exercise1_cd_loss.ipynb"
    path.write_text(json.dumps(nb), encoding="utf8")
    task = graded_exercise("exercise1_cd_loss", path)
    assert {q.name: q.points for q in task.questions} == {"output": 0, "value_same_size": 3,
                                                         "value_mixed_sizes": 3, "gradient": 5}
    nb["metadata"]["cdlib"]["grading"]["points"] = {"gradients": 5}
    path.write_text(json.dumps(nb), encoding="utf8")
    with pytest.raises(ConfigError, match="unknown question"):
        graded_exercise("exercise1_cd_loss", path)


def test_bad_input_is_one_sentence(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="unknown exercise"):
        grade("exercise9", tmp_path)
    with pytest.raises(Exception, match="does not exist"):
        grade("exercise1_cd_loss", tmp_path / "nowhere")
    with pytest.raises(Exception, match="holds no .ipynb"):
        grade("exercise1_cd_loss", tmp_path)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "IPython" else real(name))
    with pytest.raises(GradingError, match=r"pip install 'channel-distillation\[classroom\]'"):
        grade("exercise1_cd_loss", tmp_path)


def test_unreadable_and_empty_notebooks_score_zero_without_running(tmp_path):
    (tmp_path / "garbage.ipynb").write_text("not json", encoding="utf8")
    (tmp_path / "empty.ipynb").write_text(json.dumps({"cells": [], "metadata": {}, "nbformat": 4,
                                                      "nbformat_minor": 5}), encoding="utf8")
    grades = {g.submission: g for g in grade("exercise2_gkd_loss", tmp_path, out=tmp_path / "g.csv", timeout=5)}
    assert grades["garbage"].points == 0 and "not a readable notebook" in grades["garbage"].verdicts[0].diagnosis
    assert grades["empty"].points == 0 and "empty" in grades["empty"].verdicts[0].diagnosis
    assert os.path.isfile(tmp_path / "feedback" / "exercise2_gkd_loss" / "empty.md")


def test_cli_grade_writes_the_csv_and_reports_bad_input(tmp_path, capsys):
    from cdlib.cli import main

    (tmp_path / "s1.ipynb").write_text("{}", encoding="utf8")
    assert main(["grade", "exercise3_edt_schedule", str(tmp_path), "--out", str(tmp_path / "out" / "g.csv")]) == 0
    rows = _rows(tmp_path / "out" / "g.csv")
    assert list(rows["s1"]) == ["answers", "starts_at_6", "decays", "labels_on"]
    assert (tmp_path / "out" / "feedback" / "exercise3_edt_schedule" / "s1.md").is_file()
    assert (tmp_path / "out" / "g_totals.csv").read_text(encoding="utf8").splitlines() == [
        "submission,points,max_points,review", "s1,0,10,"]
    assert "1 notebook graded in" in capsys.readouterr().out
    assert main(["grade", "exercise3_edt_schedule", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.count("\n") == 1  # one sentence, no traceback


def test_scores_channel_attention_and_connectors():
    from torch import nn

    class Right(nn.Sequential):
        def __init__(self, c_in, c_out):
            super().__init__(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))

    class WithBias(nn.Sequential):
        def __init__(self, c_in, c_out):
            super().__init__(nn.Conv2d(c_in, c_out, 1), nn.BatchNorm2d(c_out), nn.ReLU())

    class ReluFirst(nn.Sequential):
        def __init__(self, c_in, c_out):
            super().__init__(nn.Conv2d(c_in, c_out, 1, bias=False), nn.ReLU(), nn.BatchNorm2d(c_out))

    class Library(connectors.Connector):
        pass

    def attention(x):
        return x.mean(dim=(2, 3))

    full = {"attention_value": 3, "attention_gradient": 1, "connector_layers": 3, "connector_output": 3}
    assert _score_in_process(CONNECTOR, attention, MyConnector=Right) == (full, set())
    points, _ = _score_in_process(CONNECTOR, lambda x: x.mean(dim=(2, 3), keepdim=True), MyConnector=WithBias)
    # a bias costs the layers question only: BatchNorm cancels it, so the output is right
    assert points == {"attention_value": 0, "attention_gradient": 0, "connector_layers": 0, "connector_output": 3}
    points, _ = _score_in_process(CONNECTOR, lambda x: x.amax(dim=(2, 3)), MyConnector=ReluFirst)
    # the right layers in the wrong order: judged by what the module computes, the output is what is wrong
    assert points == {"attention_value": 0, "attention_gradient": 0, "connector_layers": 3, "connector_output": 0}
    assert _score_in_process(CONNECTOR, attention, MyConnector=Library)[1] == {"cdlib.connectors.Connector.__init__"}
    assert notebook.static_uses(_cells("from cdlib import connectors", "class MyConnector(connectors.Connector):\n    pass"),
                                CONNECTOR.names, CONNECTOR.forbidden_modules) == ["cdlib.connectors.Connector"]


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_instructor_notebooks_give_every_questions_points(name):
    """The points live in the instructor notebook's metadata; the grader's defaults only fill gaps."""
    points = notebook.notebook_points(INSTRUCTOR / f"{name}.ipynb")
    assert points is not None and set(points) == {q.name for q in EXERCISES[name].questions}
    assert graded_exercise(name).max_points == sum(points.values())


# ============================================================================ one record, one direction


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_each_exercise_record_serves_the_check_and_the_grader(name):
    """One record per exercise: its notebook, its public check, and questions judged on its own hidden cases."""
    task = EXERCISES[name]
    assert (INSTRUCTOR / f"{name}.ipynb").is_file() and task.name == name
    assert task.function in task.signature and callable(task.check)
    ids = [c["id"] for c in task.hidden_cases()]
    assert len(ids) == len(set(ids))
    for q in task.questions:
        assert q.cases and set(q.cases) <= set(ids), (name, q.name)
    assert "cdlib_classroom" in task.forbidden_modules  # the classroom holds every answer
    assert all(m.name and m.diagnosis and callable(m.wrong) for ms in task.mistakes.values() for m in ms)


def test_cdlib_never_imports_the_classroom_and_finds_grade_through_its_entry_point():
    cdlib_dir = Path(losses.__file__).resolve().parent
    for path in sorted(cdlib_dir.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] == "cdlib_classroom" for n in names), f"{path} imports the classroom"
    commands = {e.name: e.value for e in importlib.metadata.entry_points(group="cdlib.commands")}
    assert commands.get("grade") == "cdlib_classroom.grading.command:add_parser"


def test_the_public_check_runs_on_the_graded_function_as_the_notebook_calls_it():
    def my_weights(epoch, epochs):
        return {"ce": 1.0, "cd": 6.0 * 0.9 ** math.floor((epoch - 1) / epochs * 4), "gkd": 0.1}

    SCHEDULE.run_check(my_weights)  # wrapped as lambda epoch: my_weights(epoch, 30), checked for 30 epochs
    assert run_submission.run_public_check({"my_weights": my_weights}, SCHEDULE.name) == {"status": "passed",
                                                                                           "message": ""}
    failed = run_submission.run_public_check({"my_cd_loss": lambda s, t: losses.cd_loss(s, t) * 2}, CD.name)
    assert failed["status"] == "failed" and "check_cd_loss found" in failed["message"]
