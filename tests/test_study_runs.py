"""``retain study``: every study end to end on tiny digits settings, and each finding sentence
following the numbers it is given (both branches, on fabricated numbers)."""

from __future__ import annotations

import json

import pytest

from retain.cli import main
from retain.studies import STUDIES, iid, mixing, prior_shift, run_study, union_gap, width
from retain.studies.common import compare, spearman, trend

TINY = """\
stream: {dataset: digits, scenario: split, n_tasks: 2, classes: [0, 1, 2, 3], limit_train: 400}
model: {name: mlp, hidden: [16]}
train: {epochs: 2, batch_size: 32, optimizer: adam, lr: 0.01}
"""

# Small sweeps: each study runs in about a second on one thread.
CASES = {
    "iid": ["max_epochs=3"],
    "prior-shift": ["every=2"],
    "similarity": ["angles=[0,90]"],
    "lr-steps": ["lrs=[0.001,0.1]", "steps=[5,20]"],
    "width": ["scales=[0.5,2]"],
    "mixing": ["shares=[0,0.3]"],
    "union-gap": ["strategies=[finetune,replay]"],
}


def test_every_study_has_a_case():
    assert set(CASES) == set(STUDIES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_study_runs_end_to_end_from_the_command_line(name, tmp_path, capsys):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    out = tmp_path / "out"
    seeds = "0,1" if name in ("iid", "mixing") else "0"
    argv = ["-q", "study", name, "--config", str(cfg), "--seeds", seeds, "--out", str(out)]
    assert main([*argv, *CASES[name]]) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "study.json").read_text())
    assert result["study"] == name
    assert result["seeds"] == [int(s) for s in seeds.split(",")]
    assert result["finding"] and result["finding"] in printed
    assert result["figures"] and all((out / f).stat().st_size > 1000 for f in result["figures"])
    assert (out / "config.resolved.yaml").is_file()
    assert result["finding"] in (out / "study.md").read_text()
    assert result["command"].startswith("retain -q study " + name)


def test_without_a_name_the_studies_are_listed(capsys):
    assert main(["study"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in STUDIES)


def test_a_study_varies_only_what_it_studies():
    """width keeps the config's data and depth and scales the widths it was given."""
    from retain.config import load_config

    cfg = load_config(
        None,
        ["stream.dataset=digits", "stream.limit_train=300", "model.hidden=[8,4]", "train.epochs=1"],
    )
    r = run_study("width", cfg, [0], None, {"scales": [1, 2]})
    assert r["numbers"]["widths"] == [[8, 4], [16, 8]]


# --------------------------------------------------------------- the noise rule and trends


def test_compare_calls_a_gap_within_twice_the_pooled_std_noise():
    assert compare([0.5, 0.52, 0.48], [0.49, 0.51, 0.47])["within_noise"] is True
    assert compare([0.9, 0.91, 0.89], [0.5, 0.51, 0.49])["within_noise"] is False
    assert compare([0.9], [0.5])["within_noise"] is None  # one seed: not measured


def test_spearman():
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3], [5, 5, 5]) is None


def test_trend_reads_rise_fall_and_noise():
    rising, _ = trend([1, 2, 3], [[0.1, 0.11], [0.2, 0.21], [0.4, 0.41]], "forgetting", "lr")
    assert "forgetting rises with lr" in rising and "larger than the seeds' spread" in rising
    falling, _ = trend([1, 2, 3], [[0.4, 0.41], [0.2, 0.21], [0.1, 0.11]], "forgetting", "lr")
    assert "falls" in falling
    flat, _ = trend([1, 2], [[0.1, 0.3], [0.12, 0.32]], "forgetting", "lr")
    assert "no clear change" in flat and "within noise" in flat


# --------------------------------------------------------------- findings on fabricated numbers


def test_iid_finding_says_which_arm_wins_only_beyond_noise():
    base = {
        "metric": "accuracy",
        "higher_is_better": True,
        "first": [0.9, 0.9],
        "d1_drop": [0.0, 0.01],
    }
    clear = iid.finding({**base, "combined": [0.96, 0.961], "sequential": [0.93, 0.931]})
    assert "combined is better by 0.030, larger than the seeds' spread" in clear
    noise = iid.finding({**base, "combined": [0.95, 0.97], "sequential": [0.96, 0.95]})
    assert "within noise" in noise and "better by" not in noise
    assert "combined was ahead in 1 of 2 seeds" in noise
    assert "lost 0.005 ± 0.007 accuracy on D1" in noise
    kept = iid.finding({**base, "combined": [0.95], "sequential": [0.96], "d1_drop": [-0.02]})
    assert "sequential is better by 0.010, one seed" in kept and "did not hurt D1" in kept


def test_mixing_finding_names_the_smallest_share_that_keeps_the_old_task():
    n = {
        "shares": [0, 0.1, 0.3],
        "keep": 0.8,
        "metric": "accuracy",
        "forgetting": [[0.9, 0.5, 0.1], [0.88, 0.45, 0.12]],
        "new": [[0.97, 0.96, 0.95], [0.97, 0.96, 0.95]],
        "gain": [[0.9] * 3] * 2,
    }
    assert "30% old data is the smallest share" in mixing.finding(n)
    n["forgetting"] = [[0.9, 0.5, 0.4], [0.88, 0.45, 0.41]]
    assert "no share up to 30% avoided 80%" in mixing.finding(n)
    n["forgetting"] = [[0.0, 0.0, 0.0], [-0.01, 0.0, 0.0]]
    assert "lost nothing" in mixing.finding(n)


def _shift(drops, before, bias_t50, features_t50):
    return {
        "vanished": 2,
        "seeds": [
            {
                "drop": d,
                "before": before,
                "bias_t50": b,
                "features_t50": f,
                "bias_only_share": 0.7,
                "vanished_half_at": 0.05,
            }
            for d, b, f in zip(drops, bias_t50, features_t50)
        ],
    }


def test_prior_shift_finding_follows_which_class_dropped_and_what_moved_first():
    held = prior_shift.finding(
        _shift([[0.0, 0.01, 0.8], [0.01, 0.0, 0.85]], [0.9, 0.9, 0.9], [0.1, 0.12], [0.5, 0.55])
    )
    assert "the vanished class 2 lost the most accuracy" in held
    assert "its accuracy halved 5 ± 0 % into the task" in held
    assert "output bias moved before the features" in held and "70 ± 0 %" in held
    failed = prior_shift.finding(
        _shift([[0.5, 0.01, 0.1], [0.55, 0.0, 0.12]], [0.9, 0.9, 0.9], [0.6, 0.62], [0.2, 0.25])
    )
    assert "was not the most forgotten" in failed and "did not move before" in failed
    unlearned = prior_shift.finding(_shift([[0.0, 0.0, 0.0]], [0.9, 0.9, 0.1], [0.1], [0.5]))
    assert "little of it to forget" in unlearned


def test_union_gap_finding_says_whether_anything_matches_joint():
    n = {
        "strategies": ["finetune", "ewc"],
        "joint": [0.95, 0.96],
        "metric": "accuracy",
        "classification": True,
        "gap": {"finetune": [0.3, 0.31], "ewc": [0.1, 0.12]},
        "disagreement": {"finetune": [0.3, 0.3], "ewc": [0.1, 0.1]},
    }
    text = union_gap.finding(n)
    assert "none matches joint" in text and text.index("ewc 0.110") < text.index("finetune")
    n["gap"]["ewc"] = [0.01, -0.01]
    assert "ewc matches joint within noise" in union_gap.finding(n)


def test_width_finding_follows_the_numbers():
    n = {"widths": [[8], [64]], "forgetting": [[0.5, 0.2], [0.52, 0.21]]}
    assert "forgetting of task 1 falls with width" in width.finding(n)
    n["forgetting"] = [[0.5, 0.48], [0.3, 0.35]]
    assert "no clear change" in width.finding(n)


def test_lr_steps_finding_reports_what_the_new_task_learned():
    from retain.studies import lr_steps

    grid = [[0.0, 0.01], [0.1, 0.3]]  # [lr][steps]
    n = {
        "lrs": [0.001, 0.1],
        "steps": [10, 100],
        "metric": "accuracy",
        "forgetting": [grid, [[0.0, 0.02], [0.12, 0.31]]],
        "new": [[[0.5, 0.6], [0.8, 0.9]], [[0.5, 0.62], [0.8, 0.91]]],
    }
    text = lr_steps.finding(n)
    assert "forgetting rises with learning rate" in text and "forgetting rises with steps" in text
    assert "the new task's accuracy went from 0.61 ± 0.01 to 0.91 ± 0.01" in text
    n["forgetting"] = [[[0.1, 0.1], [0.1, 0.1]], [[0.2, 0.2], [0.2, 0.2]]]
    assert "no clear change with learning rate" in lr_steps.finding(n)


def test_the_study_list_shows_each_parameter_with_its_default(capsys):
    assert main(["study"]) == 0
    assert "    scales=[0.25, 0.5, 1, 2, 4, 8]  factors applied" in capsys.readouterr().out


def test_similarity_by_permutation_runs_on_any_inputs():
    from retain.config import load_config

    cfg = load_config(None, ["stream.dataset=digits", "stream.limit_train=300", "model.hidden=[8]"])
    r = run_study("similarity", cfg, [0], None, {"kind": "permutation", "fractions": [0, 1]})
    forgetting = r["numbers"]["forgetting"][0]
    distance = r["numbers"]["repr_distance"][0]
    assert len(forgetting) == 2 and distance[0] == pytest.approx(0, abs=1e-6) and distance[1] > 0
    assert "permuted fraction" in r["finding"]
