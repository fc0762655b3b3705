"""What both training loops share (gptscale.runtime): monitor sinks, the error policy, checkpoint lookup,
the optimizer table and the fault hooks."""

from __future__ import annotations

import json

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from gptscale.config import TrainConfig
from gptscale.errors import GptscaleError, run_cli
from gptscale.runtime import checkpoint, engine, faults, monitor
from gptscale.runtime.checkpoint import CheckpointError


class ListSink(monitor.Sink):
    """A sink that keeps what it receives (a stand-in for a new tracker such as W&B)."""

    seen: list = []

    def text(self, line):
        self.seen.append(("text", line))

    def record(self, step, values):
        self.seen.append(("record", step, values))

    def scalars(self, step, values):
        self.seen.append(("scalars", step, values))


def test_a_new_sink_is_one_table_entry(tmp_path, monkeypatch):
    monkeypatch.setitem(monitor.SINKS, "list", ListSink)
    ListSink.seen = []
    mon = monitor.Monitor(tmp_path, rank=0, sinks=monitor.sink_names("console,jsonl,tensorboard,list"))
    mon.log("hello")
    mon.record(3, {"loss": 1.5, "mfu": None})
    mon.scalars(3, {"train/loss": 1.5, "mfu": None})
    mon.close()
    mon.close()  # idempotent
    assert ListSink.seen == [("text", "hello"), ("record", 3, {"loss": 1.5, "mfu": None}),
                             ("scalars", 3, {"train/loss": 1.5})]  # None scalars are left out
    assert (tmp_path / "train.log").read_text() == "hello\n"
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {"step": 3, "loss": 1.5, "mfu": None}
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert acc.Tags()["scalars"] == ["train/loss"] and acc.Scalars("train/loss")[0].value == 1.5


def test_only_rank_0_writes_and_unknown_trackers_are_named(tmp_path):
    mon = monitor.Monitor(tmp_path, rank=1)
    mon.log("x")
    mon.record(1, {"loss": 1.0})
    mon.close()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match=r"unknown tracker\(s\) \['wandbb'\]; choose from console, jsonl"):
        monitor.sink_names("console,wandbb")


def test_progress_eta_counts_from_the_resumed_step():
    p = monitor.Progress(total=100, done=40)
    p.t0 -= 10.0  # 10 s ago
    assert p.rate(50) == pytest.approx(1.0, rel=0.05)  # 10 steps in 10 s, not 50 in 10 s
    assert p.eta(50) in ("0m49s", "0m50s")


def test_error_policy_is_a_message_and_rc_2(capsys):
    def bad():
        raise CheckpointError("runs/x/checkpoints/latest: no such file")

    assert run_cli("gptscale demo", bad) == 2
    err = capsys.readouterr().err
    assert err == "gptscale demo: error: runs/x/checkpoints/latest: no such file\n"
    assert issubclass(CheckpointError, GptscaleError)

    def bug():
        raise ZeroDivisionError("a bug keeps its traceback")

    with pytest.raises(ZeroDivisionError):
        run_cli("gptscale demo", bug)
    assert run_cli("gptscale demo", lambda: 3) == 3 and run_cli("gptscale demo", lambda: None) == 0


def test_checkpoint_lookup_rules(tmp_path):
    """`latest` is a hint: a run folder resolves to its newest complete checkpoint (gptscale.json written),
    never to an unfinished save; an unfinished one is named when nothing complete is there."""
    run = tmp_path / "run"
    assert checkpoint.find(run, "none") is None
    assert checkpoint.find(run, "auto") is None  # a fresh run
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "latest").write_text("  \n")
    assert checkpoint.latest_tag(run / "checkpoints") is None  # empty means none
    with pytest.raises(CheckpointError, match=r"--resume .*no complete checkpoint here"):
        checkpoint.find(run, str(run))
    for step in (20, 10, 30):
        tag = run / "checkpoints" / checkpoint.tag_for(step)
        tag.mkdir()
        (tag / "mp_rank_00_model_states.pt").write_bytes(b"")
        if step != 30:  # step 30: a save that did not finish
            (tag / checkpoint.META_FILE).write_text("{}")
    assert checkpoint.complete_tags(run / "checkpoints") == ["step_00000010", "step_00000020"]
    assert checkpoint.find(run, str(tag.parent / "step_00000020")) == (run / "checkpoints", "step_00000020")
    assert checkpoint.resolve(run) == (run / "checkpoints", "step_00000020")  # whatever latest says
    with pytest.raises(CheckpointError, match="step_00000030.*missing or incomplete.*step_00000010, step_00000020"):
        checkpoint.resolve(run, tag="step_00000030")
    warnings = []
    assert checkpoint.find(run, "auto", warn=warnings.append) == (run / "checkpoints", "step_00000020")
    assert "names nothing; resuming from the newest complete checkpoint, step_00000020" in warnings[0]
    with pytest.raises(CheckpointError, match="newer than step 10 \\(step_00000020\\).*allow_step_back"):
        checkpoint.guard_newer(run, 10, allow=False)
    checkpoint.guard_newer(run, 10, allow=True, warn=warnings.append)
    assert (run / "checkpoints" / "stepped_back" / "step_00000020" / checkpoint.META_FILE).is_file()
    assert checkpoint.complete_tags(run / "checkpoints") == ["step_00000010"]


def test_checksums_catch_a_flipped_bit_and_a_changed_meta(tmp_path):
    from gptscale.runtime import integrity

    tag = tmp_path / "checkpoints" / "step_00000001"
    tag.mkdir(parents=True)
    for name in ("mp_rank_00_model_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt", "rng_rank1.pt"):
        (tag / name).write_bytes(bytes(range(256)) * 4)
    assert integrity.owner("zero_pp_rank_1_mp_rank_00_optim_states.pt") == 1 and integrity.owner("rng_rank1.pt") == 1
    files = integrity.record(tag, skip={checkpoint.META_FILE})
    assert sorted(files) == sorted(p.name for p in tag.iterdir())
    (tag / checkpoint.META_FILE).write_text(json.dumps(integrity.seal({"step": 1, "files": files})))
    assert checkpoint.problems(tag.parent, tag.name) == []
    data = bytearray((tag / "rng_rank1.pt").read_bytes())
    data[100] ^= 1
    (tag / "rng_rank1.pt").write_bytes(bytes(data))
    assert "rng_rank1.pt: sha256" in checkpoint.problems(tag.parent, tag.name)[0]
    (tag / "mp_rank_00_model_states.pt").write_bytes(b"short")
    assert any("5 bytes, but 1024 were written" in m for m in checkpoint.problems(tag.parent, tag.name))
    meta = json.loads((tag / checkpoint.META_FILE).read_text())
    (tag / checkpoint.META_FILE).write_text(json.dumps({**meta, "step": 2}))
    with pytest.raises(CheckpointError, match="does not match the checksum it was written with"):
        checkpoint.read_meta(tag.parent, tag.name)


def test_optimizers_are_one_table(monkeypatch):
    groups = engine.param_groups(torch.nn.Linear(4, 2), weight_decay=0.1)
    assert type(engine.make_optimizer(groups, TrainConfig())).__name__ == "AdamW"
    monkeypatch.setitem(engine.OPTIMIZERS, "sgd", lambda g, t: torch.optim.SGD(g, lr=t.lr))
    opt = engine.make_optimizer(groups, TrainConfig(optimizer="sgd", lr=0.5))
    assert isinstance(opt, torch.optim.SGD) and [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    with pytest.raises(engine.DSConfigError, match="train.optimizer='lion': unknown; choose from adamw, sgd"):
        engine.make_optimizer(groups, TrainConfig(optimizer="lion"))


def test_fault_hooks_live_behind_one_variable():
    env = faults.env(nan_micro="2,3", kill_after_checkpoint=4)
    assert env == {"GPTSCALE_FAULTS": "nan_micro=2,3;kill_after_checkpoint=4"}
    assert faults.spec(env) == {"nan_micro": "2,3", "kill_after_checkpoint": "4"}
    assert faults.spec({}) == {}
    with pytest.raises(ValueError, match="unknown fault hook 'nan_at'"):
        faults.spec({"GPTSCALE_FAULTS": "nan_at=3"})
