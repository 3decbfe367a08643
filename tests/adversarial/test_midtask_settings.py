"""Bad mid-task checkpoint settings (train.checkpoint_every, train.keep_step_checkpoints): one
line, exit 2, before anything is read or trained, and a run already on disk left as it was."""

from __future__ import annotations

import pytest
from refusal import BASE, put, refused

CASES = [
    (["train.checkpoint_every=-1"], ["train.checkpoint_every", ">= 0"]),
    (["train.checkpoint_every=abc"], ["train.checkpoint_every", "int"]),
    (["train.checkpoint_every=2.5"], ["train.checkpoint_every", "2.5"]),
    (["train.checkpoint_every=.nan"], ["train.checkpoint_every", "nan"]),
    (["train.checkpoint_every=1e30"], ["train.checkpoint_every", "1e30"]),
    (["train.checkpoint_every=true"], ["train.checkpoint_every", "True"]),
    (["train.checkpoint_every=[3]"], ["train.checkpoint_every", "[3]"]),
    (["train.keep_step_checkpoints=0"], ["train.keep_step_checkpoints", ">= 1"]),
    (["train.keep_step_checkpoints=-3"], ["train.keep_step_checkpoints", ">= 1"]),
    (["train.keep_step_checkpoints=null"], ["train.keep_step_checkpoints"]),
    (
        ["train.checkpoint_every=5", "output.checkpoints=false"],
        ["train.checkpoint_every", "output.checkpoints: true"],
    ),
    (["train.keep_checkpoints=2"], ["train.keep_checkpoints", "keep_step_checkpoints"]),
]


@pytest.mark.parametrize(("overrides", "needles"), CASES, ids=[" ".join(o) for o, _ in CASES])
def test_bad_step_checkpoint_settings_are_refused(capsys, tmp_path, overrides, needles):
    cfg = put(tmp_path, "exp.yaml", BASE)
    out = tmp_path / "out"
    refused(capsys, ["run", str(cfg), "--out", str(out), *overrides], *needles, keep=[cfg])
    assert not out.exists()


@pytest.mark.parametrize(("overrides", "needles"), CASES[:3] + CASES[-2:])
def test_bad_settings_on_resume_leave_the_run_as_it_was(capsys, tmp_path, overrides, needles):
    cfg = put(tmp_path, "exp.yaml", BASE)
    out = tmp_path / "out"
    put(out, "config.resolved.yaml", BASE)
    put(out, "result.json", '{"status": "running"}')
    put(out, "checkpoints/step-0000-000000003/state.json", "{}")
    argv = ["run", str(cfg), "--out", str(out), "--resume", *overrides]
    refused(capsys, argv, *needles, keep=[cfg, out])
