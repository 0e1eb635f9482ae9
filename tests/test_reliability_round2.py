"""Issue 24, reliability round 2: each test reproduces one reported fault.

Corrupt images with DataLoader workers (exit must never hang), finished models never
overwritten without --overwrite, damaged metrics in a seed study, studies that merge
their tables, locks that check process and host, signals between phases and while
starting, absurd seed counts.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cdlib import cli, recipes, runfolder, runlock, seeds, train
from cdlib.errors import ConfigError

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
TIMEOUT = 240  # seconds a child may take on a busy 2-core machine before it counts as hung


def tiny(tmp_path: Path, name: str = "run", **overrides) -> recipes.RunConfig:
    settings = dict(data="synthetic", data_root=None,
                    data_options={"num_classes": 4, "train_per_class": 12, "test_per_class": 6},
                    image_size=8, student="cifar_resnet10_w4", teacher="cifar_resnet10_w8", method="student", epochs=2,
                    batch_size=8, lr=0.05, lr_milestones=(2,), max_steps_per_epoch=3, device="cpu", num_workers=0,
                    progress=False, run_dir=str(tmp_path / name))
    settings.update(overrides)
    return recipes.get("demo", **settings)


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cdlib: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


def _terminal_signals() -> None:
    """Ctrl-C at its default, as in a terminal (a backgrounded shell would hand it down ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# The command as its console script runs it, with Python's cyclic garbage collector off: an exception's
# traceback then keeps the DataLoader (and its workers) alive until exit, as it did, by chance, for the reporter.
_COMMAND_WITHOUT_GC = ("import gc, sys; gc.disable(); sys.argv[0] = 'cdlib'; from cdlib.cli import main; "
                       "sys.exit(main())")


# --------------------------------------------------------------------------- 1: a corrupt image, with workers


def _image_tree(root: Path, corrupt: bool) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, per_class in (("train", 10), ("val", 4)):
        for cls in ("a", "b"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i}.JPEG")
    if corrupt:
        (root / "train" / "b" / "7.JPEG").write_bytes(rng.bytes(3000))
    return root


def _imagenet_command(data: Path, run_dir: Path, workers: int, epochs: int = 2) -> list:
    return [sys.executable, "-c", _COMMAND_WITHOUT_GC, "distill", "--recipe", "demo", "--method", "student", "--data",
            "imagenet", "--data-root", str(data), "--image-size", "32", "--student", "resnet18", "--batch-size", "4",
            "--num-workers", str(workers), "--epochs", str(epochs), "--device", "cpu", "--no-progress",
            "--run-dir", str(run_dir)]


def _processes_naming(text: str) -> list:
    """PIDs of live processes whose command line holds ``text`` (the run folder: the command and its workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                zombie = (entry / "stat").read_text().rsplit(") ", 1)[1].startswith("Z")  # exited, not yet reaped
                if text.encode() in (entry / "cmdline").read_bytes() and not zombie:
                    found.append(int(entry.name))
            except (OSError, IndexError):
                continue
    return found


@pytest.mark.slow
@pytest.mark.parametrize("workers", [2, 0])
def test_a_corrupt_image_is_one_line_naming_it_and_exit_never_hangs(tmp_path, workers):
    data = _image_tree(tmp_path / "DATA", corrupt=True)
    run_dir = tmp_path / f"R{workers}"
    try:
        done = subprocess.run(_imagenet_command(data, run_dir, workers), capture_output=True, text=True, env=ENV,
                              timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        for pid in _processes_naming(str(run_dir)):  # the workers that ignored the SIGTERM of Python's exit
            os.kill(pid, signal.SIGKILL)
        pytest.fail("the command did not exit (it waited for its DataLoader workers)")
    line = _one_line(done.stderr)
    assert done.returncode == 2, done.stderr
    assert f"cannot read image {data / 'train' / 'b' / '7.JPEG'} (UnidentifiedImageError)" in line
    assert "replace it" in line
    time.sleep(0.5)
    assert _processes_naming(str(run_dir)) == [], "DataLoader workers outlived the command"


@pytest.mark.slow
@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_a_signal_to_the_whole_group_while_workers_run_saves_and_exits(tmp_path, signum, status):
    """A terminal's Ctrl-C and a job scheduler's SIGTERM reach the workers too: the command still saves, says
    one line and exits, and no worker is left behind."""
    data = _image_tree(tmp_path / "DATA", corrupt=False)
    run_dir = tmp_path / "R"
    process = subprocess.Popen(_imagenet_command(data, run_dir, workers=2, epochs=60), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=ENV, preexec_fn=_terminal_signals,
                               start_new_session=True)
    try:
        for line in process.stdout:
            if "epoch   1/" in line:
                os.killpg(process.pid, signum)
                break
        out, err = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail("the command did not stop")
    assert process.returncode == status, (out, err)
    assert ("stopped by SIGTERM" if signum == signal.SIGTERM else "stopped by Ctrl-C") in _one_line(err)
    assert (run_dir / "student" / "checkpoint.pt").is_file()
    assert not (run_dir / "student" / runlock.LOCK_FILE).exists()
    time.sleep(0.5)
    assert _processes_naming(str(run_dir)) == [], "DataLoader workers outlived the command"


def test_a_worker_error_reaches_the_main_process_as_the_one_sentence_said_in_the_worker():
    from cdlib.data import UnreadableImage

    # What torch's ExceptionWrapper.reraise builds in the main process from a worker's exception.
    worker_text = ("Caught UnreadableImage in DataLoader worker process 1.\n"
                   "Original Traceback (most recent call last):\n"
                   '  File "x.py", line 1, in <module>\ncdlib.data.sources.UnreadableImage: cannot read image a/b.JPEG '
                   "(OSError): broken; replace it.\n")
    assert str(UnreadableImage(worker_text)) == "cannot read image a/b.JPEG (OSError): broken; replace it."


# --------------------------------------------------------------------------- 3: never overwrite a finished model


def test_a_finished_model_is_not_retrained_when_its_checkpoint_is_gone(tmp_path, capsys):
    cfg = tiny(tmp_path)
    train.fit(cfg)
    folder = Path(cfg.run_dir)
    model = folder / "model.pt"
    before = _sha256(model)
    (folder / "checkpoint.pt").unlink()
    for resume in (False, True):
        with pytest.raises(ConfigError, match=rf"holds a finished model, {re.escape(str(model))}, .*--overwrite"):
            train.fit(cfg.replace(resume=resume))
    assert _sha256(model) == before
    # The command says the same in one line.
    command = ["train", "--recipe", "demo", "--model", "cifar_resnet10_w4", "--data", "synthetic", "--data-options",
               "num_classes=4", "train_per_class=12", "test_per_class=6", "--image-size", "8", "--epochs", "2",
               "--batch-size", "8", "--max-steps-per-epoch", "3", "--device", "cpu", "--no-progress",
               "--run-dir", str(tmp_path / "cli")]
    assert cli.main(command) == 0
    (tmp_path / "cli" / "cifar_resnet10_w4" / "checkpoint.pt").unlink()
    capsys.readouterr()
    again = cli.main(command)
    assert again == 2 and "holds a finished model" in _one_line(capsys.readouterr().err)
    # Asked explicitly, it trains afresh.
    train.fit(cfg.replace(overwrite=True, seed=1))
    assert _sha256(model) != before and json.loads((folder / "config.json").read_text())["seed"] == 1


@pytest.mark.parametrize("name, text", [("config.json", '{"my": "own"}'), ("metrics.jsonl", '{"epoch": 1}\n'),
                                        ("model.pt", "mine")])
def test_a_users_own_files_in_a_run_folder_are_not_replaced(tmp_path, name, text):
    cfg = tiny(tmp_path, epochs=1, lr_milestones=(1,))
    folder = Path(cfg.run_dir)
    folder.mkdir()
    (folder / name).write_text(text)
    with pytest.raises(ConfigError, match=rf"{re.escape(str(folder / name))}, and no checkpoint.*overwrite=True"):
        train.fit(cfg)
    assert (folder / name).read_text() == text


def test_a_run_stopped_before_its_first_checkpoint_starts_again_and_a_finished_teacher_is_reused(tmp_path):
    cfg = tiny(tmp_path, epochs=1, lr_milestones=(1,))
    folder = Path(cfg.run_dir)
    # What a run stopped at once (a third Ctrl-C) in its first epoch leaves: its config, no metrics, no checkpoint.
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(runfolder.config_dict(cfg)))
    (folder / "metrics.jsonl").write_text("")
    train.fit(cfg)
    assert (folder / "model.pt").is_file()
    # Reuse is not overwrite: a kd run reuses the finished teacher, whose file stays byte for byte.
    exp = tiny(tmp_path, "exp", method="kd", epochs=1, lr_milestones=(1,))
    train.run(exp)
    teacher = Path(exp.run_dir) / "teacher" / "model.pt"
    before = _sha256(teacher)
    (Path(exp.run_dir) / "teacher" / "checkpoint.pt").unlink()
    train.run(exp.replace(run_dir=exp.run_dir, resume=True))
    assert _sha256(teacher) == before


# --------------------------------------------------------------------------- 5, 6: seed studies


def test_a_study_rerun_over_a_damaged_metrics_line_rewrites_it_from_the_checkpoint(tmp_path, capsys):
    cfg = tiny(tmp_path, "study", method="student,kd")
    first = seeds.run(cfg, seeds=[0], plot=False)
    folder = Path(cfg.run_dir)
    teacher_sha = _sha256(folder / "teacher" / "seed0" / "model.pt")
    metrics = folder / "student" / "seed0" / "metrics.jsonl"
    good = metrics.read_text()
    metrics.write_text(good + "\x00garbage{\n")
    again = seeds.run(cfg, seeds=[0], plot=False)
    pd.testing.assert_frame_equal(again.per_seed, first.per_seed)
    assert metrics.read_text() == good
    # The teacher's file is untouched, so its students' recorded SHA-256 still matches.
    assert _sha256(folder / "teacher" / "seed0" / "model.pt") == teacher_sha
    # Without a checkpoint to rewrite it from: one line naming the file.
    metrics.write_text(good + "garbage\n")
    (folder / "student" / "seed0" / "checkpoint.pt").unlink()
    with pytest.raises(ConfigError, match=rf"{re.escape(str(metrics))} is damaged"):
        seeds.run(cfg, seeds=[0], plot=False)


def test_a_second_study_into_the_same_folder_merges_its_rows(tmp_path):
    cfg = tiny(tmp_path, "study", epochs=1, lr_milestones=(1,))
    seeds.run(cfg, seeds=[0, 1], plot=False)
    folder = Path(cfg.run_dir)
    first = pd.read_csv(folder / "per_seed.csv")
    variant = {"student (lr 0.01)": {"method": "student", "lr": 0.01}}
    study = seeds.run(cfg, seeds=[0], methods=[variant], baseline="student (lr 0.01)", plot=True)
    per_seed = pd.read_csv(folder / "per_seed.csv")
    assert sorted(zip(per_seed.method, per_seed.seed)) == [("student", 0), ("student", 1), ("student (lr 0.01)", 0)]
    student = per_seed[per_seed.method == "student"].reset_index(drop=True)
    pd.testing.assert_frame_equal(student, first)
    summary = pd.read_csv(folder / "summary.csv").set_index("method")
    assert summary.loc["student", "n_seeds"] == 2 and summary.loc["student (lr 0.01)", "n_seeds"] == 1
    assert sorted(study.per_seed.method) == sorted(per_seed.method)
    # The same method and seed again: its row is refreshed, not added.
    seeds.run(cfg, seeds=[1], plot=False)
    assert len(pd.read_csv(folder / "per_seed.csv")) == 3


# --------------------------------------------------------------------------- 4: absurd seed counts


def test_an_absurd_seed_count_is_refused_at_once_and_before_anything_runs(tmp_path, capsys):
    started = time.perf_counter()
    with pytest.raises(ConfigError, match=r"1,000,001 seeds.*at most 10,000"):
        seeds.parse_seeds("0-1000000")
    with pytest.raises(ConfigError, match="at most 10,000"):
        seeds.parse_seeds(list(range(10_001)))
    assert time.perf_counter() - started < 2.0  # was hours: a quadratic duplicate check over the expanded range
    assert seeds.parse_seeds("0-9999")[-1] == 9999
    with pytest.raises(ConfigError, match="seed 4294967296 is not"):
        seeds.parse_seeds("4294967290-4294967296")  # refused before seed 4294967290 trains
    code = cli.main(["distill", "--recipe", "demo", "--method", "student", "--seeds", "0-1000000", "--run-dir",
                     str(tmp_path / "exp")])
    assert code == 2 and "1,000,001 seeds" in _one_line(capsys.readouterr().err)
    assert not (tmp_path / "exp").exists()


# --------------------------------------------------------------------------- 9: locks check process and host


def _plant_lock(folder: Path, pid: int, host: str, since: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / runlock.LOCK_FILE).write_text(json.dumps({"pid": pid, "host": host, "since": since}))


def test_a_lock_naming_a_live_process_or_another_host_is_not_taken_over(tmp_path, capsys):
    folder = tmp_path / "run"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        time.sleep(0.2)
        # A live process of this host that holds no flock (a shared file system's locks can be per host).
        _plant_lock(folder, sleeper.pid, socket.gethostname(), time.time())
        with pytest.raises(ConfigError, match=rf"in use by process {sleeper.pid} .*still running.*delete "):
            with runlock.held(folder):
                pass
        assert runlock.holder(folder)["pid"] == sleeper.pid
        # Another host: nothing here can tell whether it runs.
        _plant_lock(folder, 4242, "elsewhere.example", time.time())
        with pytest.raises(ConfigError, match=r"process 4242 on host elsewhere.example.*this host cannot check.*"
                                              r"if it is truly gone, delete "):
            with runlock.held(folder):
                pass
        # The PID of a run that died long ago, reused by a process started since: stale.
        _plant_lock(folder, sleeper.pid, socket.gethostname(), time.time() - 10_000)
        capsys.readouterr()
        with runlock.held(folder):
            assert runlock.holder(folder)["pid"] == os.getpid()
        assert "no longer running; taking the folder over" in capsys.readouterr().out
    finally:
        sleeper.kill()
        sleeper.wait()
    # A dead process of this host: taken over with a note, as before.
    _plant_lock(folder, sleeper.pid, socket.gethostname(), time.time())
    with runlock.held(folder):
        pass
    assert f"locked by process {sleeper.pid}" in capsys.readouterr().out


# --------------------------------------------------------------------------- 12: signals between phases, at start


def test_sigterm_between_the_teacher_and_the_student_is_one_line_and_leaves_no_lock(tmp_path):
    run_dir = tmp_path / "exp"
    # The signal lands as the teacher is being recorded: after its fit, before the student's.
    program = ("import os, signal, sys\n"
               "from cdlib import runfolder\n"
               "record = runfolder.record_teacher\n"
               "def record_then_signal(*a, **k):\n"
               "    os.kill(os.getpid(), signal.SIGTERM)\n"
               "    return record(*a, **k)\n"
               "runfolder.record_teacher = record_then_signal\n"
               "sys.argv[0] = 'cdlib'\n"
               "from cdlib.cli import main\n"
               "sys.exit(main())\n")
    command = [sys.executable, "-c", program, "distill", "--recipe", "demo", "--method", "kd", "--epochs", "1",
               "--image-size", "8", "--data-options", "train_per_class=20", "--device", "cpu", "--no-progress",
               "--run-dir", str(run_dir)]
    done = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=TIMEOUT,
                          preexec_fn=_terminal_signals)
    assert done.returncode == 143, (done.stdout, done.stderr)
    assert "stopped by SIGTERM" in _one_line(done.stderr)
    assert not (run_dir / "teacher" / runlock.LOCK_FILE).exists()
    assert (run_dir / "teacher" / "teacher.json").is_file()  # the teacher was recorded before the stop
    assert not (run_dir / "kd").exists()  # the student never started


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_a_signal_while_the_command_starts_is_one_line(tmp_path, signum, status):
    command = [sys.executable, "-m", "cdlib", "distill", "--recipe", "demo", "--method", "kd", "--epochs", "1",
               "--device", "cpu", "--no-progress", "--run-dir", str(tmp_path / "exp")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                               preexec_fn=_terminal_signals)
    time.sleep(0.4)  # importing torch: a second or more
    process.send_signal(signum)
    out, err = process.communicate(timeout=TIMEOUT)
    assert process.returncode == status, (out, err)
    assert f"stopped by {'SIGTERM' if signum == signal.SIGTERM else 'Ctrl-C'}" in _one_line(err)


# --------------------------------------------------------------------------- faults found by the trials of this round


def test_a_run_folder_deleted_while_training_is_written_again_whole_and_stays_locked(tmp_path, capsys):
    import shutil

    cfg = tiny(tmp_path, epochs=3, lr_milestones=(3,))
    folder = Path(cfg.run_dir)
    seen = {}

    def on_step(epoch, step):
        if (epoch, step) == (1, 1):
            shutil.rmtree(folder)  # a clean-up of "old runs" that caught this one
        if (epoch, step) == (2, 1):
            seen["holder"] = runlock.holder(folder)

    result = train.fit(cfg, on_step=on_step)
    assert "was deleted or moved while this run trained" in capsys.readouterr().out
    assert seen["holder"]["pid"] == os.getpid()  # no second run could take the folder meanwhile
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint.pt", "config.json", "metrics.jsonl", "model.pt"]
    assert [r["epoch"] for r in runfolder.read_metrics(folder)] == [1, 2, 3] == [r["epoch"] for r in result.metrics]
    assert json.loads((folder / "config.json").read_text())["epochs"] == 3


def test_a_checkpoint_with_flipped_bits_is_refused_not_loaded_as_wrong_weights(tmp_path):
    from cdlib import checkpoint
    from cdlib.errors import CheckpointError

    cfg = tiny(tmp_path, epochs=1, lr_milestones=(1,))
    train.fit(cfg)
    for name in ("checkpoint.pt", "model.pt"):
        path = Path(cfg.run_dir) / name
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF  # inside the tensors: torch.load itself would not notice
        path.write_bytes(bytes(data))
        damaged = rf"{re.escape(str(path))} is corrupt: its part .* fails its checksum"
        with pytest.raises(CheckpointError, match=damaged):
            checkpoint.safe_load(path)
    with pytest.raises(CheckpointError, match="fails its checksum"):
        train.fit(cfg.replace(resume=True))


@pytest.mark.slow
def test_a_dataloader_worker_killed_mid_run_is_one_line_that_says_how_to_resume(tmp_path):
    data = _image_tree(tmp_path / "DATA", corrupt=False)
    run_dir = tmp_path / "R"
    command = _imagenet_command(data, run_dir, workers=2, epochs=60)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                               preexec_fn=_terminal_signals, start_new_session=True)
    try:
        for line in process.stdout:
            if "epoch   1/" in line:
                children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
                os.kill(int(children[0]), signal.SIGKILL)  # what the kernel's out-of-memory killer does
                break
        out, err = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail("the command did not stop")
    assert process.returncode == 2, (out, err)
    line = _one_line(err)
    assert "DataLoader worker" in line and "lower --num-workers" in line and "--resume" in line
    assert not (run_dir / "student" / runlock.LOCK_FILE).exists()


def test_a_study_waits_for_another_writing_its_tables_into_the_same_folder(tmp_path):
    folder = tmp_path / "study"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from cdlib import runlock\n"
                               f"with runlock.held({str(folder)!r}):\n    print('held', flush=True); time.sleep(1.5)"],
                              stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.perf_counter()
        with seeds._tables_locked(folder):
            waited = time.perf_counter() - started
            assert runlock.holder(folder)["pid"] == os.getpid()
        assert waited > 0.3  # it waited for the other study rather than merging beside it (or failing)
    finally:
        holder.wait(timeout=60)


def test_a_study_with_no_seeds_or_a_missing_teacher_file_is_one_sentence_before_anything_trains(tmp_path):
    with pytest.raises(ConfigError, match="seeds must be a range"):
        seeds.run(tiny(tmp_path), seeds=None)
    missing = tmp_path / "nowhere" / "model.pt"
    cfg = tiny(tmp_path, method="student,kd", teacher_checkpoint=str(missing))
    for call in (lambda: seeds.run(cfg, seeds=[0]), lambda: train.run(cfg)):
        with pytest.raises(ConfigError, match=r"teacher checkpoint .*model\.pt does not exist"):
            call()
    assert not (tmp_path / "run" / "student").exists()  # refused before the student trained
