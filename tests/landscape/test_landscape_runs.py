"""``retain landscape`` on real (tiny) runs: snapshots, the losses at the three models against
the run's own score matrix, the files and the report section, a small causal LM."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from retain.cli import main
from retain.landscape import landscape
from retain.report.record import load_record

CONFIG = """\
seed: 0
stream: {dataset: digits, scenario: split, n_tasks: 2, classes: [0, 1, 2, 3]}
model: {name: mlp, hidden: [16]}
train: {epochs: 2, batch_size: 64, optimizer: adam, lr: 0.01}
output: {plots: false, snapshots: 3}
"""


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    root = tmp_path_factory.mktemp("landscape")
    (root / "c.yaml").write_text(CONFIG)
    out = root / "cmp"
    assert (
        main(
            [
                "compare",
                str(root / "c.yaml"),
                "--strategies",
                "finetune,joint",
                "--out",
                str(out),
                "-q",
            ]
        )
        == 0
    )
    return out


def _loss(run_dir, row, col):
    return load_record(run_dir / "result.json").matrices["loss"][row][col]


def test_snapshots_hold_the_path_and_each_task_end_is_the_checkpointed_model(compared):
    snaps = sorted(p.name for p in (compared / "finetune" / "snapshots").iterdir())
    assert snaps[0] == "t00-end.safetensors" and "t02-end.safetensors" in snaps
    assert sum(name.startswith("t01-s") for name in snaps) == 2  # N - 1 inside each task
    end = load_file(str(compared / "finetune" / "snapshots" / "t02-end.safetensors"))
    ckpt = load_file(str(compared / "finetune" / "checkpoints" / "task-0002" / "model.safetensors"))
    assert end.keys() == ckpt.keys()
    assert all(torch.equal(end[k], ckpt[k]) for k in end)


def test_the_three_models_score_as_in_the_runs_score_matrix(compared):
    s = landscape(compared, grid=5, samples=10**6, split="test")
    t1, t2 = s["tasks"]["D1"], s["tasks"]["D2"]
    p = s["points"]
    assert p["theta1"]["loss"][t1] == pytest.approx(_loss(compared / "finetune", 1, 0), rel=1e-5)
    assert p["theta2"]["loss"][t2] == pytest.approx(_loss(compared / "finetune", 2, 1), rel=1e-5)
    assert p["joint"]["loss"][t1] == pytest.approx(_loss(compared / "joint", 1, 0), rel=1e-5)
    assert set(s["lines"]) == {"theta1-theta2", "theta1-joint"}
    assert s["path"][0]["end"] and s["path"][-1]["end"]  # from θ₁ to θ₂
    assert s["path"][-1]["xy"] == pytest.approx(p["theta2"]["xy"], abs=1e-4)
    assert s["path"][-1]["distance"] == pytest.approx(0.0, abs=1e-3)
    assert s["distances"]["theta1-theta2"] == pytest.approx(p["theta2"]["xy"][0])
    grid = load_file(str(compared / "landscape" / "plane.safetensors"))
    assert grid["loss/mix"].shape == (5, 5)
    saved = json.loads((compared / "landscape" / "plane.json").read_text())
    assert saved["joint_vs_path"]["finding"] == s["joint_vs_path"]["finding"]
    report = (compared / "report.md").read_text()
    assert "## Loss landscape" in report and "](landscape/plane.png)" in report
    assert "data:image/png;base64" in (compared / "report.html").read_text()


def test_the_grid_at_theta1_is_the_models_evaluated_loss(compared):
    from retain.landscape import _setup
    from retain.landscape.plane import plane_through
    from retain.landscape.points import read_run

    seq, joint = read_run(compared / "finetune"), read_run(compared / "joint")
    setup = _setup(seq, (1, 2), 10**6, "test", 0)
    names = setup["names"]
    plane, _ = plane_through(
        seq.end(1, names), seq.end(2, names), joint.end(1, names), setup["params"]
    )
    at = setup["evaluator"].at(plane, torch.tensor([[0.0, 0.0]]))
    assert at[0, 0].item() == pytest.approx(_loss(compared / "finetune", 1, 0), rel=1e-5)


def test_random_directions_around_one_model(compared):
    s = landscape(compared, random=True, grid=5, samples=64)
    assert s["mode"] == "random" and s["grid"]["x"] == [-1.0, 1.0]
    assert (compared / "landscape" / "random.png").is_file()
    assert "](landscape/random.png)" in (compared / "report.md").read_text()


def test_a_joint_run_given_by_path_and_a_path_from_the_cli(compared, capsys):
    out = compared.parent / "given"
    argv = ["landscape", str(compared / "finetune"), "--joint", str(compared / "joint")]
    assert main([*argv, "--grid", "4", "--samples", "32", "--path", "--out", str(out), "-q"]) == 0
    assert "θ_joint projects onto the line" in capsys.readouterr().out
    assert (out / "plane.png").is_file()


LM_CONFIG = """\
seed: 0
stream: {{scenario: text, block_size: 16, cache: false, sources: {{en: en.txt, es: es.txt}},
  tasks: [en, es]}}
model: {{name: hf, tokenizer: tok, hf_config: {{hidden_size: 16, intermediate_size: 32,
  num_hidden_layers: 1, num_attention_heads: 2, num_key_value_heads: 2, vocab_size: {vocab},
  max_position_embeddings: 64}}}}
train: {{steps: 3, batch_size: 4, optimizer: adamw, lr: 0.01}}
output: {{plots: false, save_model: false, snapshots: 2}}
"""


@pytest.mark.slow  # trains a language model twice (sequential and joint) before drawing
def test_a_small_causal_lm_on_a_subsample_of_token_blocks(tmp_path):
    pytest.importorskip("transformers")
    from test_vocab import ENGLISH, SPANISH, bpe_tokenizer

    tok = bpe_tokenizer()
    tok.save_pretrained(str(tmp_path / "tok"))
    (tmp_path / "en.txt").write_text("\n\n".join(f"{ENGLISH} {i}." for i in range(6)))
    (tmp_path / "es.txt").write_text("\n\n".join(f"{SPANISH} {i}." for i in range(6)))
    (tmp_path / "lm.yaml").write_text(LM_CONFIG.format(vocab=len(tok)))
    out = tmp_path / "cmp"
    argv = ["compare", str(tmp_path / "lm.yaml"), "--strategies", "finetune,joint"]
    assert main([*argv, "--out", str(out), "-q"]) == 0
    s = landscape(out, grid=3, samples=10**6, split="test", line_points=3)
    en = s["tasks"]["D1"]
    assert s["points"]["theta1"]["loss"][en] == pytest.approx(
        _loss(out / "finetune", 1, 0), rel=1e-4
    )
    assert len(s["path"]) == 3  # θ₁, one snapshot inside task 2, θ₂


@pytest.mark.slow  # trains a joint model (about 8 s)
def test_train_joint_trains_theta_joint_with_the_runs_config_once(compared, tmp_path):
    out = tmp_path / "ls"
    s = landscape(
        compared / "finetune", train_joint_model=True, grid=3, samples=32, out=out, report=False
    )
    assert s["points"]["joint"]["source"].startswith("trained for this landscape")
    rec = load_record(out / "joint" / "result.json")
    assert rec.joint and rec.complete and rec.tasks == ["t1", "t2"]
    before = (out / "joint" / "result.json").read_bytes()
    landscape(
        compared / "finetune", train_joint_model=True, grid=3, samples=32, out=out, report=False
    )
    assert (out / "joint" / "result.json").read_bytes() == before  # reused, not trained again
