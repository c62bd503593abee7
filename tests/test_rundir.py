"""Run directories that survive damage: checkpoints checked on resume, the previous one
as a fallback, damaged JSON refused in one line. Keras-free: models are bytes here."""

from __future__ import annotations

import json

import pytest

from fmnist import rundir
from fmnist.errors import RunDirError


def _trained(tmp_path, epochs: int = 3):
    """A run directory whose checkpoints are the bytes of each epoch's fake model."""
    (tmp_path / "run").mkdir()
    run = rundir.RunDir.create(tmp_path / "run", {"model": "mlp", "layout": rundir.LAYOUT})
    for epoch in range(1, epochs + 1):
        run.checkpoint(lambda path, epoch=epoch: path.write_bytes(bytes([epoch]) * 4096),
                       {"epoch": epoch, "loss": 1.0 / epoch})
    return run.path


def _opened(path):
    notices = []
    return rundir.RunDir.open(path, warn=notices.append), notices


def test_the_last_two_checkpoints_are_kept_with_their_size_and_hash(tmp_path):
    path = _trained(tmp_path)
    state = json.loads((path / rundir.STATE).read_text())
    assert state["format"] == rundir.LAYOUT and state["epochs_done"] == 3
    assert state["bytes"] == 4096 and len(state["sha256"]) == 64
    assert state["previous"]["checkpoint"] == "checkpoints/epoch-002.keras"
    assert sorted(p.name for p in (path / "checkpoints").iterdir()) == [
        "epoch-002.keras", "epoch-003.keras"]
    run, notices = _opened(path)
    assert run.epochs_done == 3 and len(run.history) == 3 and not notices


@pytest.mark.parametrize("damage, words", [
    ("truncate", "epoch-003.keras is truncated: 2,048 bytes where 4,096 were written"),
    ("flip", "epoch-003.keras is altered: its SHA-256 is not the one state.json recorded"),
    ("delete", "epoch-003.keras (epoch 3) is missing"),
])
def test_a_damaged_checkpoint_is_named_and_the_previous_one_taken(tmp_path, damage, words):
    path = _trained(tmp_path)
    checkpoint = path / "checkpoints" / "epoch-003.keras"
    data = checkpoint.read_bytes()
    if damage == "truncate":
        checkpoint.write_bytes(data[:2048])
    elif damage == "flip":
        checkpoint.write_bytes(data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])
    else:
        checkpoint.unlink()
    run, notices = _opened(path)
    assert run.epochs_done == 2 and len(run.history) == 2
    assert run.checkpoint_file().name == "epoch-002.keras"
    assert len(notices) == 2 and words in notices[0] and "\n" not in notices[0]
    assert notices[1] == ("resuming from checkpoints/epoch-002.keras (epoch 2), "
                          "the previous good checkpoint")


def test_a_state_pointing_past_the_last_checkpoint_falls_back(tmp_path):
    path = _trained(tmp_path)
    state = json.loads((path / rundir.STATE).read_text())
    ahead = {**state, "epochs_done": 4, "checkpoint": "checkpoints/epoch-004.keras",
             "previous": {key: state[key] for key in ("epochs_done", "checkpoint", "bytes", "sha256")}}
    rundir.write_json(path / rundir.STATE, ahead)
    run, notices = _opened(path)
    assert run.epochs_done == 3 and "epoch-004.keras (epoch 4) is missing" in notices[0]


def test_with_no_good_checkpoint_left_it_says_how_to_start_again(tmp_path):
    path = _trained(tmp_path)
    for checkpoint in (path / "checkpoints").iterdir():
        checkpoint.write_bytes(b"x")
    before = {p.name: p.read_bytes() for p in path.rglob("*") if p.is_file()}
    with pytest.raises(RunDirError) as raised:
        _opened(path)
    message = str(raised.value)
    assert "has no good checkpoint to resume from" in message and "\n" not in message
    assert f"fmnist train --config {path / rundir.CONFIG} --out NEW_DIR" in message
    assert {p.name: p.read_bytes() for p in path.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("name", [rundir.CONFIG, rundir.HISTORY, rundir.STATE])
def test_a_damaged_json_file_is_one_line_and_nothing_is_overwritten(tmp_path, name):
    path = _trained(tmp_path)
    (path / name).write_text('{"epochs_done": 3, "check')
    before = {p: p.read_bytes() for p in path.rglob("*") if p.is_file()}
    with pytest.raises(RunDirError, match=f"{name} is not valid JSON") as raised:
        _opened(path)
    assert "\n" not in str(raised.value) and "damaged" in str(raised.value)
    assert {p: p.read_bytes() for p in path.rglob("*") if p.is_file()} == before


def test_a_run_of_the_first_layout_still_resumes(tmp_path):
    """state.json without a format, size or hash: its checkpoint is taken as it is."""
    path = _trained(tmp_path)
    rundir.write_json(path / rundir.STATE, {"epochs_done": 3,
                                            "checkpoint": "checkpoints/epoch-003.keras"})
    run, notices = _opened(path)
    assert run.epochs_done == 3 and not notices
