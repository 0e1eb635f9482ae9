"""Run folders you can trust: one writer at a time, signals that save, no litter, OS errors as one line.

Subprocess tests where the behaviour is about processes (signals, locks); in
process where a file-system condition can be made directly.
"""

from __future__ import annotations

import errno
import os
import pickle
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cdlib import checkpoint, cli, recipes, runfolder, runlock, train
from cdlib.errors import CheckpointError, ConfigError

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def tiny(tmp_path: Path, name: str = "run", **overrides) -> recipes.RunConfig:
    settings = dict(data="synthetic", data_root=None, data_options={"num_classes": 4, "train_per_class": 12, "test_per_class": 6},
                    image_size=8, student="cifar_resnet10_w4", teacher="cifar_resnet10_w8", method="student", epochs=2,
                    batch_size=8, lr=0.05, lr_milestones=(2,), max_steps_per_epoch=3, device="cpu", num_workers=0,
                    progress=False, run_dir=str(tmp_path / name))
    settings.update(overrides)
    settings.setdefault("lr_milestones", ())
    if "lr_milestones" not in overrides:
        settings["lr_milestones"] = (min(2, settings["epochs"]),)
    return recipes.get("demo", **settings)


def _train_command(run_dir: Path, *extra: str, epochs: int = 3, per_class: int = 100) -> list:
    """`cdlib train` of a small model on synthetic data: about a second per epoch on one thread."""
    return [sys.executable, "-m", "cdlib", "train", "--recipe", "demo", "--model", "cifar_resnet10_w4", "--data",
            "synthetic", "--data-options", "num_classes=4", f"train_per_class={per_class}", "test_per_class=5",
            "--image-size", "8", "--batch-size", "8", "--epochs", str(epochs), "--lr-milestones", "--device", "cpu",
            "--no-progress", "--run-dir", str(run_dir), *extra]


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cdlib: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


# --------------------------------------------------------------------------- one writer per folder


def test_a_folder_held_by_a_live_process_is_refused_and_a_dead_ones_lock_is_taken_over(tmp_path, capsys):
    cfg = tiny(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from cdlib import runlock\n"
                               f"with runlock.held({cfg.run_dir!r}):\n    print('held', flush=True); time.sleep(120)"],
                              stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "held"
        info = runlock.holder(cfg.run_dir)
        assert info["pid"] == holder.pid and info["host"]
        with pytest.raises(ConfigError, match=rf"run folder .* is in use by process {holder.pid} on host "):
            train.fit(cfg)
        with pytest.raises(ConfigError, match="in use"):  # a resume too
            train.fit(cfg.replace(resume=True))
        assert not (Path(cfg.run_dir) / "checkpoint.pt").exists()
    finally:
        holder.kill()  # SIGKILL: the lock file stays behind, naming a dead process
        holder.wait()
    assert runlock.holder(cfg.run_dir)["pid"] == holder.pid
    capsys.readouterr()
    train.fit(cfg)
    out = capsys.readouterr().out
    assert f"was locked by process {holder.pid} on host " in out and "which is no longer running" in out
    assert not (Path(cfg.run_dir) / runlock.LOCK_FILE).exists()  # released at the end


def test_two_runs_started_together_in_one_folder_one_trains_the_other_is_one_line(tmp_path):
    run_dir = tmp_path / "shared"
    first = subprocess.Popen(_train_command(run_dir, "--seed", "0", epochs=2, per_class=40), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=ENV)
    second = subprocess.Popen(_train_command(run_dir, "--seed", "1", epochs=2, per_class=40), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=ENV)
    outs = [p.communicate(timeout=300) for p in (first, second)]
    codes = sorted([first.returncode, second.returncode])
    assert codes == [0, 2], outs
    loser_err = outs[[first.returncode, second.returncode].index(2)][1]
    assert re.search(r"is in use by process \d+ on host ", _one_line(loser_err))
    winner_seed = [0, 1][[first.returncode, second.returncode].index(0)]
    folder = run_dir / "cifar_resnet10_w4"
    assert checkpoint.safe_load(folder / "checkpoint.pt")["config"]["seed"] == winner_seed
    assert [r["epoch"] for r in runfolder.read_metrics(folder)] == [1, 2]


def test_a_lock_taken_a_moment_ago_is_named_by_its_holder_once_it_has_written_its_pid(tmp_path):
    """The race CI met: the winner holds the flock but has not yet written its PID."""
    import fcntl
    import json
    import socket
    import threading

    folder = tmp_path / "busy"
    folder.mkdir()
    winner = os.open(folder / runlock.LOCK_FILE, os.O_RDWR | os.O_CREAT)
    fcntl.flock(winner, fcntl.LOCK_EX | fcntl.LOCK_NB)  # locked, file still empty
    info = {"pid": 424242, "host": socket.gethostname(), "since": time.time()}
    writer = threading.Timer(0.3, lambda: os.write(winner, json.dumps(info).encode()))
    writer.start()
    try:
        with pytest.raises(ConfigError, match=r"in use by process 424242 on host "):
            with runlock.held(folder):
                pass
    finally:
        writer.join()
        os.close(winner)


def test_leftover_temporary_files_of_cut_short_saves_are_removed_at_the_next_start(tmp_path, capsys):
    cfg = tiny(tmp_path, epochs=1)
    folder = Path(cfg.run_dir)
    folder.mkdir()
    litter = [folder / ".checkpoint.pt.k3j2x9.tmp", folder / ".model.pt.abcdef.tmp", folder / "metrics.jsonl.tmp"]
    for path in litter:
        path.write_bytes(b"x" * 300_000)
    keep = folder / "notes.txt"
    keep.write_text("mine")
    train.fit(cfg)
    assert "removed the temporary files (0.9 MB)" in capsys.readouterr().out
    assert not any(p.exists() for p in litter) and keep.read_text() == "mine"
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint.pt", "config.json", "metrics.jsonl", "model.pt",
                                                        "notes.txt"]


# --------------------------------------------------------------------------- signals


def _terminal_signals() -> None:
    """Child processes start with Ctrl-C at its default, as in a terminal: a job a shell put in the
    background inherits SIGINT *ignored* (POSIX), and a signal sent before cdlib installs its own
    handler would then be lost - that is the shell's wish, not what these tests are about."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _stop_after_first_epoch(command: list, signals: list, gap: float = 0.0):
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                               preexec_fn=_terminal_signals)
    lines = []
    for line in process.stdout:
        lines.append(line)
        if "epoch   1/" in line:
            for i, signum in enumerate(signals):
                if i:
                    time.sleep(gap)
                process.send_signal(signum)
            break
    out, err = process.communicate(timeout=120)
    return process.returncode, "".join(lines) + out, err


@pytest.mark.slow
def test_sigterm_saves_like_ctrl_c_exits_143_and_the_run_resumes_to_the_uninterrupted_result(tmp_path):
    """Three processes, ~25 s here: a straight run, one stopped by SIGTERM, and its resume."""
    straight = subprocess.run(_train_command(tmp_path / "straight", epochs=2, per_class=40), capture_output=True,
                              text=True, env=ENV, timeout=300)
    assert straight.returncode == 0, straight.stderr
    command = _train_command(tmp_path / "stopped", epochs=2, per_class=40)
    code, out, err = _stop_after_first_epoch(command, [signal.SIGTERM])
    assert code == 143, (out, err)
    assert "stopped by SIGTERM" in _one_line(err) and "--resume" in err
    assert re.search(r"interrupted (in|before) epoch 2", out), out
    folder = tmp_path / "stopped" / "cifar_resnet10_w4"
    assert checkpoint.safe_load(folder / "checkpoint.pt")["epoch"] == 2
    resumed = subprocess.run(command + ["--resume"], capture_output=True, text=True, env=ENV, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    a = checkpoint.safe_load(tmp_path / "straight" / "cifar_resnet10_w4" / "model.pt")["state_dict"]
    b = checkpoint.safe_load(folder / "model.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a), "the resumed run differs from the uninterrupted one"
    assert runfolder.read_metrics(folder)[-1]["test_loss"] == runfolder.read_metrics(tmp_path / "straight" / "cifar_resnet10_w4")[-1]["test_loss"]


@pytest.mark.parametrize("signals, status", [([signal.SIGINT, signal.SIGINT], 130),
                                             ([signal.SIGTERM, signal.SIGTERM], 143),
                                             pytest.param([signal.SIGTERM, signal.SIGINT], 143, marks=pytest.mark.slow)],
                         ids=["int-int", "term-term", "term-int"])
def test_a_second_signal_while_stopping_still_saves_a_loadable_checkpoint(tmp_path, signals, status):
    command = _train_command(tmp_path / "r", epochs=2, per_class=40)
    code, out, err = _stop_after_first_epoch(command, signals, gap=0.02)
    assert code == status, (out, err)
    assert "Traceback" not in err
    saved = checkpoint.safe_load(tmp_path / "r" / "cifar_resnet10_w4" / "checkpoint.pt")
    assert saved["epoch"] == 2  # the stop was saved (mid-epoch 2, or at its start)
    assert not list((tmp_path / "r" / "cifar_resnet10_w4").glob("*.tmp"))


def test_ctrl_c_during_start_up_is_one_line(tmp_path):
    # `distill` prints this line before the teacher's fit() loads data and builds models: the signal lands there.
    command = [sys.executable, "-m", "cdlib", "distill", "--recipe", "demo", "--method", "kd", "--epochs", "1",
               "--image-size", "8", "--no-progress", "--device", "cpu", "--run-dir", str(tmp_path / "exp")]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                               preexec_fn=_terminal_signals)
    for line in process.stdout:
        if "training the teacher" in line:
            process.send_signal(signal.SIGINT)
            break
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, (out, err)
    assert "stopped by Ctrl-C" in _one_line(err)
    # Landing before fit() holds signals, it stops with the CLI's line alone; after, fit() adds where it stopped.
    assert out == "" or re.fullmatch(r"interrupted (before epoch 1: nothing had been trained yet|in epoch 1 at step \d+)"
                                     r"[^\n]*\n", out), out
    assert not (tmp_path / "exp" / "teacher" / runlock.LOCK_FILE).exists()


# --------------------------------------------------------------------------- files and OS errors


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_saved_files_keep_the_users_umask(tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        result = train.fit(tiny(tmp_path, epochs=1, max_steps_per_epoch=1))
    finally:
        os.umask(previous)
    for name in ("model.pt", "checkpoint.pt", "config.json", "metrics.jsonl"):
        assert stat.S_IMODE((result.run_dir / name).stat().st_mode) == mode, name


def test_an_unreadable_checkpoint_is_not_called_corrupt(tmp_path, monkeypatch):
    model = train.fit(tiny(tmp_path, epochs=1, max_steps_per_epoch=1)).model_path
    if IS_ROOT:  # root reads any file: make the open fail as it would for another user
        real_open = open

        def refusing_open(path, *args, **kwargs):
            if Path(path) == model:
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr("builtins.open", refusing_open)
    else:
        model.chmod(0)
    with pytest.raises(CheckpointError) as info:
        checkpoint.load_model(model)
    message = str(info.value)
    assert message.startswith(f"cannot read model file {model}: permission denied")
    assert "chmod" in message and "corrupt" not in message and "delete" not in message


def test_a_raw_pickle_is_said_to_hold_python_objects_and_no_message_advises_deleting(tmp_path):
    raw = tmp_path / "legacy.pt"
    raw.write_bytes(pickle.dumps({"state_dict": {"w": [1.0, 2.0]}}))
    with pytest.raises(CheckpointError, match="is a plain Python pickle .* holds Python objects; loading it could run code"):
        checkpoint.safe_load(raw)
    messages = []
    for content in (os.urandom(512), b"PK\x03\x04" + os.urandom(512), pickle.dumps([1, 2])):
        raw.write_bytes(content)
        with pytest.raises(CheckpointError) as info:
            checkpoint.safe_load(raw)
        messages.append(str(info.value))
    assert "is not a PyTorch checkpoint" in messages[0] and "truncated or corrupt (an interrupted copy" in messages[1]
    assert not any("delete" in m for m in messages), messages


def test_a_run_folder_that_is_a_file_or_under_one_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match=rf"could not create the run folder {re.escape(str(blocker))}: a file of that "
                                          "name exists where a folder is needed"):
        train.fit(tiny(tmp_path, run_dir=str(blocker)))
    run_dir = blocker / "sub"
    code = cli.main(["train", "--recipe", "demo", "--epochs", "1", "--max-steps-per-epoch", "1", "--image-size", "8",
                     "--no-progress", "--device", "cpu", "--run-dir", str(run_dir)])
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and f"could not create the run folder {run_dir / 'teacher'}: a part of that path is a file" in line
    assert blocker.read_text() == "not a folder"


@pytest.mark.skipif(IS_ROOT, reason="root writes into read-only folders")
def test_a_read_only_run_folder_is_one_line(tmp_path, capsys):
    run_dir = tmp_path / "ro"
    run_dir.mkdir()
    run_dir.chmod(0o555)
    code = cli.main(["train", "--recipe", "demo", "--epochs", "1", "--image-size", "8", "--no-progress",
                     "--device", "cpu", "--run-dir", str(run_dir)])
    assert code == 2 and "permission denied" in _one_line(capsys.readouterr().err)


def test_a_full_disk_while_saving_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    cfg = tiny(tmp_path, epochs=3)
    real_save, saves = torch.save, []

    def filling_save(obj, f, *args, **kwargs):
        saves.append(1)
        if len(saves) == 2:  # the end of epoch 2: write part of the file, then the disk is full
            f.write(b"PK\x03\x04partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", filling_save)
    with pytest.raises(CheckpointError) as info:
        train.fit(cfg)
    message = str(info.value)
    assert f"could not save the checkpoint {Path(cfg.run_dir) / 'checkpoint.pt'}: the disk is full" in message
    assert "the last good checkpoint is" in message and "(end of epoch 1)" in message
    assert checkpoint.safe_load(Path(cfg.run_dir) / "checkpoint.pt")["epoch"] == 2
    assert not list(Path(cfg.run_dir).glob(".*.tmp"))
    monkeypatch.setattr(torch, "save", real_save)
    assert len(train.fit(cfg.replace(resume=True)).metrics) == 3


def test_torchs_own_write_failure_becomes_an_os_error_naming_the_file(tmp_path, monkeypatch):
    def failing_save(obj, f, *args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError) as info:
        checkpoint.atomic_save({"a": 1}, tmp_path / "x.pt")
    assert info.value.filename == str(tmp_path / "x.pt") and info.value.errno in (errno.EIO, errno.ENOSPC)
    assert not list(tmp_path.iterdir())


def test_a_seed_too_large_and_a_download_without_network_are_one_line(tmp_path, capsys, monkeypatch):
    code = cli.main(["train", "--recipe", "demo", "--seed", str(2**70), "--run-dir", str(tmp_path / "r")])
    assert code == 2 and "seed 1180591620717411303424 is not a whole number from 0 to" in _one_line(capsys.readouterr().err)

    import urllib.error

    import torchvision

    def offline(*args, **kwargs):
        raise urllib.error.URLError(OSError(errno.ENETUNREACH, "Network is unreachable"))

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", offline)
    code = cli.main(["train", "--recipe", "demo", "--data", "cifar100", "--download", "--data-root", str(tmp_path / "d"),
                     "--run-dir", str(tmp_path / "r")])
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and f"could not download CIFAR-100 into {tmp_path / 'd'} (" in line and "Network is unreachable" in line


# --------------------------------------------------------------------------- resume sees the same data and teacher


def _fake_cifar(root: Path, seed: int) -> Path:
    """A CIFAR-100 folder in the python format with 40 training and 20 test images."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for split, n in (("train", 40), ("test", 20)):
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "fine_labels": list(rng.integers(0, 100, n))}
        (folder / split).write_bytes(pickle.dumps(batch))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [str(i) for i in range(100)]}))
    return root


def test_resume_refuses_other_data_behind_the_same_settings_but_not_the_same_data_moved(tmp_path):
    a, b = _fake_cifar(tmp_path / "a", 0), _fake_cifar(tmp_path / "b", 1)
    cfg = tiny(tmp_path, data="cifar100", data_root=str(a), data_options={}, image_size=None, epochs=2)

    def stop(epoch, step):
        if (epoch, step) == (1, 2):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train.fit(cfg, on_step=stop)
    with pytest.raises(ConfigError, match=r"cannot resume .*: it was trained with other data \(data: data_root "
                                          rf"'{re.escape(str(a))}' -> '{re.escape(str(b))}', content fingerprint"):
        train.fit(cfg.replace(resume=True, data_root=str(b)))
    moved = tmp_path / "moved"
    a.rename(moved)
    assert len(train.fit(cfg.replace(resume=True, data_root=str(moved))).metrics) == 2


def test_a_full_disk_before_the_first_save_does_not_advise_resuming(tmp_path, monkeypatch):
    def full_disk(obj, f, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError) as info:
        train.fit(tiny(tmp_path))
    message = str(info.value)
    assert "the disk is full" in message and "nothing to resume" in message
    assert "--resume" not in message
