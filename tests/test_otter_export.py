"""The Otter-Grader export (``cdlib export-otter``): all five assignments build with ``otter assign``, and
``otter run`` (no Docker) gives a right submission full marks and a wrong one less, with the named mistake in
the public test's output. Needs otter-grader and ipykernel (the classroom extra)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("otter")
pytest.importorskip("ipykernel")

from cdlib_classroom.exercises import exercise, names  # noqa: E402
from cdlib_classroom.otter_export import (  # noqa: E402
    IGNORE_TAG,
    default_requirement,
    export,
    master_notebook,
    question_map,
)

# A wrong answer per assignment (one named mistake each) and a word of the public check's diagnosis of it.
WRONG = {
    "exercise1_cd_loss": ("my_cd_loss", '''def my_cd_loss(student_feats, teacher_feats):
    return sum(((s.mean((2, 3)) - t.mean((2, 3))) ** 2).sum(1).mean() for s, t in zip(student_feats, teacher_feats))
''', "sum"),
    "exercise2_gkd_loss": ("my_gkd_loss", '''def my_gkd_loss(student_logits, teacher_logits, targets, temperature=1.0):
    kept = (teacher_logits.argmax(1) == targets).float()
    log_q = F.log_softmax(student_logits / temperature, 1)
    log_p = F.log_softmax(teacher_logits / temperature, 1)
    return ((log_p.exp() * (log_p - log_q)).sum(1) * kept).sum() / kept.sum().clamp_min(1)
''', "T^2"),
    "exercise3_edt_schedule": ("my_weights", '''def my_weights(epoch, epochs):
    return {"ce": 1.0, "cd": 6.0 * (1 + epoch / epochs), "gkd": 0.1}
''', "DECAYS"),
    "exercise4_kd_loss": ("my_kd_loss", '''def my_kd_loss(student_logits, teacher_logits, T):
    log_q, log_p = F.log_softmax(student_logits / T, 1), F.log_softmax(teacher_logits / T, 1)
    return (log_p.exp() * (log_p - log_q)).sum(1).mean()
''', "T^2"),
    "exercise5_connector": ("my_channel_attention", '''def my_channel_attention(feature_map):
    return feature_map.amax(dim=(2, 3))
''', "max"),
}


def test_master_notebook_marks_heavy_cells_and_splits_points():
    nb = master_notebook("exercise1_cd_loss")
    assert nb["cells"][0]["source"].startswith("# ASSIGNMENT CONFIG")
    sources = ["".join(c["source"]) for c in nb["cells"]]
    assert any("# BEGIN SOLUTION" in s and "###" not in s for s in sources)
    tagged = [s for c, s in zip(nb["cells"], sources) if IGNORE_TAG in c.get("metadata", {}).get("tags", [])]
    assert any(s.startswith("# Setup: installs cdlib") for s in tagged)
    assert any("check_cd_loss(" in s for s in tagged)  # the public check cell: otter's q1 runs it
    task = exercise("exercise1_cd_loss")
    points = [float(s.split("points: ")[1].split("\n")[0]) for s in sources if "# BEGIN TEST CONFIG" in s]
    assert sum(points) == pytest.approx(task.max_points)
    assert '"' not in "".join(s for s in sources if "# BEGIN TEST CONFIG" in s).replace('"""', "")


def _solution_and_wrong(name: str, made: dict, folder: Path) -> tuple:
    """(right, wrong) submissions: the student notebook with the instructor's answer, and with WRONG's."""
    solution = json.loads(Path(made["autograder"]).with_name(f"{name}.ipynb").read_text(encoding="utf8"))
    student = json.loads(Path(made["student"]).read_text(encoding="utf8"))
    answers = {i: c for i, c in enumerate(solution["cells"]) if c["cell_type"] == "code"
               and any(f"def {n}(" in "".join(c["source"]) or f"class {n}(" in "".join(c["source"])
                       for n in exercise(name).names)}
    right = json.loads(json.dumps(student))
    for cell in right["cells"]:
        for answer in answers.values():
            head = "".join(answer["source"]).split("\n")[0]
            if cell["cell_type"] == "code" and "".join(cell["source"]).split("\n")[0] == head:
                cell["source"] = answer["source"]
    wrong = json.loads(json.dumps(right))
    fn, source, _ = WRONG[name]
    cell = next(c for c in wrong["cells"] if c["cell_type"] == "code" and f"def {fn}(" in "".join(c["source"]))
    cell["source"] = source
    paths = []
    for label, nb in (("right", right), ("wrong", wrong)):
        path = folder / f"{name}-{label}.ipynb"
        path.write_text(json.dumps(nb), encoding="utf8")
        paths.append(path)
    return tuple(paths)


def _otter_run(zip_path: Path, submission: Path) -> dict:
    out = submission.with_suffix("")
    out.mkdir()
    proc = subprocess.run([sys.executable, "-m", "otter", "run", "-a", str(zip_path), "-o", str(out), str(submission)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads((out / "results.json").read_text(encoding="utf8"))


@pytest.mark.slow
def test_all_five_exports_grade_right_and_wrong_submissions_with_otter_run(tmp_path):
    start = time.perf_counter()
    made = {name: export(name, tmp_path / name) for name in names()}  # one process builds all five
    built = time.perf_counter() - start
    runs = []
    for name in names():
        assert made[name]["autograder"] is not None and made[name]["student"].is_file()
        student = "".join("".join(c["source"]) for c in json.loads(made[name]["student"].read_text())["cells"])
        assert 'grader.check("q1")' in student and "BEGIN SOLUTION" not in student
        right, wrong = _solution_and_wrong(name, made[name], tmp_path)
        runs += [(name, "right", made[name]["autograder"], right), (name, "wrong", made[name]["autograder"], wrong)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda r: _otter_run(r[2], r[3]), runs))
    scores = {}
    for (name, label, _, _), result in zip(runs, results):
        tests = [t for t in result["tests"] if "score" in t]
        scores[(name, label)] = (sum(t["score"] for t in tests), sum(t["max_score"] for t in tests))
        if label == "wrong":
            public = next(t for t in result["tests"] if t["name"] == "Public Tests")["output"]
            assert "Test case failed" in public and WRONG[name][2] in public, (name, public[-800:])
        assert {t["name"] for t in tests} == set(question_map(name)), name
    print(f"\nexports built in {built:.1f} s, 10 otter runs in {time.perf_counter() - start - built:.1f} s")
    for key, (got, total) in sorted(scores.items()):
        print(f"{key[0]:<24} {key[1]:<5} {got:g} / {total:g}")
    for name in names():
        total = exercise(name).max_points
        assert scores[(name, "right")] == pytest.approx((total, total)), name
        assert scores[(name, "wrong")][0] < total - 0.5, name


def test_the_autograder_installs_what_the_setup_cell_installs_with_the_classroom_extra(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "ci"))
    import setup_cell

    notebook = tmp_path / "x.ipynb"
    cell = {"cell_type": "code", "metadata": {}, "source": setup_cell.setup_cell(ref="v9.9"), "outputs": [],
            "execution_count": None}
    notebook.write_text(json.dumps({"cells": [cell], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    expected = setup_cell.pip_spec("v9.9").replace("channel-distillation @", "channel-distillation[classroom] @")
    assert default_requirement(notebook) == expected
