"""Bad inputs to ``retain study``: each refused in one line (exit 2) before any training, with
nothing written."""

from __future__ import annotations

import pytest
from refusal import BASE, put, refused

LINEAR = BASE.replace("hidden: [16]", "hidden: []")
HF = BASE.replace(
    "model: {name: mlp, hidden: [16]}",
    "model: {name: hf, hf_config: {model_type: llama, hidden_size: 32}}",
)
REGRESSION = BASE.replace(
    "stream: {dataset: digits, scenario: split, n_tasks: 2, classes: [0, 1, 2, 3]}",
    "stream: {dataset: diabetes, scenario: iid, n_tasks: 2}",
)

CASES = [
    # (config text, arguments after the config, what the one line must say)
    (BASE, ["widht"], ["unknown study 'widht'", "did you mean 'width'", "studies: iid, "]),
    (LINEAR, ["width"], ["model.hidden is empty", "model.hidden=[100,100]"]),
    (HF, ["width"], ["model 'hf' has no width it can vary"]),
    (BASE, ["width", "scale=[1,2]"], ["no parameter 'scale'", "did you mean 'scales'"]),
    (BASE, ["width", "--seeds", "a,b"], ["--seeds must be numbers"]),
    (BASE, ["width", "--seeds", "1,1"], ["--seeds must be distinct"]),
    (BASE, ["similarity", "kind=spin"], ["similarity.kind must be one of rotation, permutation"]),
    (REGRESSION, ["similarity"], ["needs images", "use kind=permutation"]),
    (BASE, ["mixing", "shares=[0.1,0.3]"], ["starting at 0"]),
    (BASE, ["union-gap", "strategies=[joint]"], ["compares strategies with joint"]),
    (BASE, ["union-gap", "strategies=[finetune,ewcc]"], ["unknown strategy 'ewcc'"]),
    (REGRESSION, ["prior-shift"], ["numeric target (regression)"]),
    (BASE, ["lr-steps", "lrs=[0.1,0.01]"], ["increasing order"]),
]


@pytest.mark.parametrize("config,args,needles", CASES, ids=[" ".join(c[1]) for c in CASES])
def test_a_bad_study_input_is_refused_before_training(tmp_path, capsys, config, args, needles):
    cfg = put(tmp_path, "c.yaml", config)
    out = tmp_path / "out"
    name, rest = args[0], args[1:]
    refused(
        capsys,
        ["study", name, "--config", str(cfg), "--out", str(out), *rest],
        *needles,
        keep=[cfg],
    )
    assert not out.exists()


def test_a_full_out_folder_is_refused_and_kept(tmp_path, capsys):
    cfg = put(tmp_path, "c.yaml", BASE)
    old = put(tmp_path / "old", "result.txt", "earlier work")
    refused(
        capsys,
        ["study", "iid", "--config", str(cfg), "--out", str(old.parent)],
        "already exists and is not empty",
        keep=[old.parent, cfg],
    )
