"""Run directories that must not be resumed as they are: a folder retain did not write, a folder
of another kind, a changed setting, a file cut short, garbled or edited by hand. Each is refused
in one line naming the file, and every byte of the folder is left as it was."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from refusal import BASE, put, refused

from retain.cli import main

CKPT = "checkpoints/task-0002"


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A finished run, a finished comparison and a model package, made once; each test damages
    a copy."""
    root = tmp_path_factory.mktemp("made")
    cfg = put(root, "exp.yaml", BASE)
    assert main(["run", str(cfg), "--out", str(root / "run"), "-q"]) == 0
    argv = ["compare", str(cfg), "--strategies", "finetune", "--out", str(root / "cmp"), "-q"]
    assert main(argv) == 0
    assert main(["package", str(root / "run"), "--out", str(root / "pkg"), "-q"]) == 0
    return root


@pytest.fixture
def work(made, tmp_path):
    """Copies of the made folders and the config, in a folder of this test's own."""
    for name in ("run", "cmp", "pkg"):
        shutil.copytree(made / name, tmp_path / name)
    put(tmp_path, "exp.yaml", BASE)
    return tmp_path


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def state(change):
    return lambda d: edit_json(d / "run" / CKPT / "state.json", change)


def legacy_state(change):
    """An edit of a checkpoint written before state.json listed its files' sizes."""

    def edit(data):
        data.pop("files")
        change(data)

    return state(edit)


def both_tasks_done(n):
    def edit(d):
        edit_json(d / "run" / "checkpoints" / "LATEST.json", lambda x: x.update(tasks_done=n))
        state(lambda x: x.update(tasks_done=n))(d)

    return edit


def truncate(rel: str, keep: int):
    def edit(d):
        p = d / rel
        p.write_bytes(p.read_bytes()[:keep])

    return edit


def garble(rel: str, at: int = 8, n: int = 16):
    def edit(d):
        p = d / rel
        b = bytearray(p.read_bytes())
        b[at : at + n] = b"#" * n
        p.write_bytes(bytes(b))

    return edit


def write(rel: str, content: str | bytes):
    return lambda d: put(d, rel, content)


def remove(rel: str):
    def edit(d):
        p = d / rel
        shutil.rmtree(p) if p.is_dir() else p.unlink()

    return edit


def _torch():
    import torch

    return torch


def _cut_row(x):
    x["rows"][1] = x["rows"][1][:1]


def _retensor(d, file: str, change) -> None:
    """``file`` of the checkpoint rewritten as a valid safetensors file with ``change`` applied
    to its tensors, as an older checkpoint (no file sizes in state.json) would have it."""
    from safetensors.torch import load_file, save_file

    legacy_state(lambda x: None)(d)
    p = d / "run" / CKPT / file
    tensors = load_file(str(p))
    change(tensors)
    save_file(tensors, str(p))


def _rng_as_float(d):
    _retensor(d, "rng.safetensors", lambda t: t.update({"t.0": t["t.0"].float()}))


def _wider_first_layer(d):
    """The weights of a model with 32 hidden units where the config has 16."""
    torch = _torch()

    def change(t):
        first, out = sorted(k for k in t if k.endswith("weight"))
        t[first], t[first.replace("weight", "bias")] = torch.zeros(32, 64), torch.zeros(32)
        t[out] = torch.zeros(t[out].shape[0], 32)

    _retensor(d, "model.safetensors", change)


RUN = ["run", "{cfg}", "--out", "{run}", "--resume", "-q"]

# (id, damage, extra arguments, what the one line must say)
CASES = [
    # --- folders retain did not write, or of another kind
    (
        "ordinary-folder-with-report-and-result",
        lambda d: (
            shutil.rmtree(d / "run"),
            put(d, "run/report.md", "# my notes\n"),
            put(d, "run/result.json", '{"accuracy": 0.93}'),
        ),
        [],
        ["not a retain run directory", "result.json"],
    ),
    (
        "ordinary-folder-with-notes",
        lambda d: (shutil.rmtree(d / "run"), put(d, "run/notes.txt", "mine")),
        [],
        ["not a retain run directory"],
    ),
    (
        "unmarked-folder-with-garbled-result",
        lambda d: (shutil.rmtree(d / "run"), put(d, "run/result.json", "{not json")),
        [],
        ["not a retain run directory", "not valid JSON"],
    ),
    (
        "run-resume-on-a-comparison",
        lambda d: (shutil.rmtree(d / "run"), shutil.copytree(d / "cmp", d / "run")),
        [],
        ["holds a comparison", "retain compare --resume"],
    ),
    (
        "run-resume-on-a-package",
        lambda d: (shutil.rmtree(d / "run"), shutil.copytree(d / "pkg", d / "run")),
        [],
        ["model package", "retain update"],
    ),
    (
        "run-resume-with-seeds-on-a-plain-run",
        None,
        ["seeds=[0,1]"],
        ["holds a run (retain run), not a run over several seeds"],
    ),
    (
        "marker-from-a-newer-format",
        write("run/retain.json", '{"kind": "run", "format": 2}'),
        [],
        ["newer retain", "format 2", "upgrade"],
    ),
    (
        "marker-garbled",
        write("run/retain.json", '{"kind": "run", "form'),
        [],
        ["retain.json' cannot be used", "not valid JSON"],
    ),
    (
        "marker-unknown-kind",
        write("run/retain.json", '{"kind": "banana", "format": 1}'),
        [],
        ["retain.json", "kind must be one of"],
    ),
    (
        "marker-a-list",
        write("run/retain.json", "[1, 2]"),
        [],
        ["retain.json", "JSON object expected"],
    ),
    (
        "marker-format-a-string",
        write("run/retain.json", '{"kind": "run", "format": "1"}'),
        [],
        ["retain.json", "format must be a whole number"],
    ),
    (
        "marker-says-comparison",
        write("run/retain.json", '{"kind": "compare", "format": 1}'),
        [],
        ["holds a comparison"],
    ),
    (
        "result-of-a-comparison-in-a-run-folder",
        lambda d: shutil.copy(d / "cmp" / "result.json", d / "run" / "result.json"),
        [],
        ["result.json' cannot be used", "compare record"],
    ),
    (
        "result-garbled",
        truncate("run/result.json", 100),
        [],
        ["result.json", "not valid JSON", "delete it: the resumed run writes it again"],
    ),
    (
        "result-matrix-wrong-type",
        lambda d: edit_json(d / "run" / "result.json", lambda x: x.update(matrix="abc")),
        [],
        ["result.json", "matrix"],
    ),
    # --- the settings
    ("changed-learning-rate", None, ["train.lr=0.1"], ["config differs", "train.lr"]),
    ("changed-task-count", None, ["stream.n_tasks=4"], ["config differs", "stream.n_tasks"]),
    (
        "config-garbled",
        write("run/config.resolved.yaml", "seed: [0\nstream: {"),
        [],
        ["config.resolved.yaml' cannot be used", "not valid YAML"],
    ),
    (
        "config-a-list",
        write("run/config.resolved.yaml", "- seed\n- stream\n"),
        [],
        ["config.resolved.yaml", "mapping of settings expected, got list"],
    ),
    (
        "config-not-utf8",
        write("run/config.resolved.yaml", b"seed: 0\nname: \xff\xfe\n"),
        [],
        ["config.resolved.yaml", "not UTF-8"],
    ),
    (
        "config-missing-beside-checkpoints",
        remove("run/config.resolved.yaml"),
        [],
        ["config.resolved.yaml", "missing"],
    ),
    # --- the checkpoint (the only one: keep_checkpoints is 1)
    ("state-cut-short", truncate(f"run/{CKPT}/state.json", 200), [], ["state.json", "not valid"]),
    ("state-a-list", write(f"run/{CKPT}/state.json", "[]"), [], ["state.json", "JSON object"]),
    ("state-missing", remove(f"run/{CKPT}/state.json"), [], ["state.json", "not finished"]),
    ("tasks-done-too-high", both_tasks_done(5), [], ["tasks_done is 5", "trains 2 task"]),
    (
        "tasks-done-disagrees-with-latest",
        state(lambda x: x.update(tasks_done=1)),
        [],
        ["tasks_done is 1", "LATEST.json says 2"],
    ),
    (
        "tasks-done-a-string",
        state(lambda x: x.update(tasks_done="2")),
        [],
        ["tasks_done must be a whole number"],
    ),
    (
        "rows-cut-short",
        state(lambda x: x.update(rows=x["rows"][:2])),
        [],
        ["rows holds 2", "expected 3"],
    ),
    ("row-missing-a-task", state(_cut_row), [], ["rows[1] holds 1 scores", "2 tasks"]),
    (
        "score-a-string",
        state(lambda x: x["rows"][2][0].update(accuracy="0.9")),
        [],
        ["rows[2][0].accuracy must be a finite number"],
    ),
    (
        "score-not-a-number",
        state(lambda x: x["rows"][1][0].update(accuracy=float("nan"))),
        [],
        ["rows[1][0].accuracy must be a finite number, got nan"],
    ),
    ("fits-not-a-list", state(lambda x: x.update(fits={})), [], ["fits must be a list"]),
    (
        "schedule-offset-edited",
        state(lambda x: x.update(schedule_offset=x["schedule_offset"] + 1)),
        [],
        ["schedule_offset", "sum of the tasks' steps"],
    ),
    (
        "state-from-a-newer-retain",
        state(lambda x: x.update(schema_version=99)),
        [],
        ["newer retain", "checkpoint version 99"],
    ),
    (
        "one-strategy-state-too-many",
        state(lambda x: x.update(strategies=[{}, {}])),
        [],
        ["strategies holds 2 strategy states, expected 1"],
    ),
    (
        "rng-refers-to-a-missing-tensor",
        state(lambda x: x["rng"].update(torch={"__tensor__": "t.99"})),
        [],
        ["rng.safetensors", "'t.99'"],
    ),
    (
        "skeleton-mapping-malformed",
        state(lambda x: x.update(strategies=[{"fisher_": {"__dict__": 5}}])),
        [],
        ["strategies: a mapping must be a list"],
    ),
    (
        "optimizer-a-number",
        state(lambda x: x.update(optimizer=5)),
        [],
        ["optimizer must be an object or null"],
    ),
    (
        "file-size-edited",
        state(lambda x: x["files"].update({"model.safetensors": 1})),
        [],
        ["model.safetensors", "1 when it was written"],
    ),
    (
        "weights-cut-short",
        truncate(f"run/{CKPT}/model.safetensors", 300),
        [],
        ["model.safetensors", "300 bytes"],
    ),
    (
        "weights-garbled-header",
        garble(f"run/{CKPT}/model.safetensors"),
        [],
        ["model.safetensors", "not a readable safetensors file"],
    ),
    (
        "weights-of-another-model",
        _wider_first_layer,
        [],
        ["does not fit the model", "net.1.bias is [32] there, [16] in the model"],
    ),
    (
        "strategy-tensors-missing",
        remove(f"run/{CKPT}/strategies.safetensors"),
        [],
        ["strategies.safetensors", "missing"],
    ),
    ("rng-state-of-another-type", _rng_as_float, [], ["torch random state must be a 1-D uint8"]),
    (
        "python-rng-state-cut",
        legacy_state(lambda x: x["rng"]["python"].update({"__tuple__": [3, {"__tuple__": [1]}]})),
        [],
        ["Python random state"],
    ),
    (
        "latest-disagrees-and-no-older-checkpoint",
        lambda d: edit_json(
            d / "run" / "checkpoints" / "LATEST.json", lambda x: x.update(tasks_done=1)
        ),
        [],
        ["tasks_done is 2", "LATEST.json says 1", "start the run again"],
    ),
    (
        "latest-garbled-and-no-checkpoint",
        lambda d: (remove(f"run/{CKPT}")(d), truncate("run/checkpoints/LATEST.json", 5)(d)),
        [],
        ["LATEST.json' cannot be used", "not valid JSON"],
    ),
]


@pytest.mark.parametrize(
    ("damage", "extra", "needles"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_a_damaged_or_foreign_run_directory_is_refused(capsys, work, damage, extra, needles):
    if damage is not None:
        damage(work)
    argv = [a.format(cfg=work / "exp.yaml", run=work / "run") for a in RUN] + extra
    refused(capsys, argv, *needles, keep=[work])


COMPARE = ["compare", "{cfg}", "--strategies", "finetune", "--out", "{cmp}", "--resume", "-q"]

COMPARE_CASES = [
    ("compare-resume-on-a-run", "run", None, [], ["holds a run (retain run)"]),
    ("compare-changed-setting", "cmp", None, ["train.lr=0.1"], ["config differs", "train.lr"]),
    (
        "compare-changed-strategy-setting",
        "cmp",
        None,
        ["strategies.0.name=ewc"],
        ["config differs", "strategies"],
    ),
    (
        "compare-finished-sub-run-cut-short",
        "cmp",
        lambda d: edit_json(
            d / "cmp/finetune/result.json", lambda x: x.update(matrix=x["matrix"][:2])
        ),
        [],
        ["finetune/result.json' cannot be used", "matrix has 2 rows, 3 expected"],
    ),
    (
        "compare-finished-sub-run-with-a-changed-config",
        "cmp",
        lambda d: put(
            d,
            "cmp/finetune/config.resolved.yaml",
            (d / "cmp/finetune/config.resolved.yaml").read_text().replace("lr: 0.001", "lr: 0.5"),
        ),
        [],
        ["config differs", "cmp/finetune", "train.lr"],
    ),
    (
        "compare-sub-folder-not-a-run",
        "cmp",
        lambda d: (shutil.rmtree(d / "cmp/finetune"), put(d, "cmp/finetune/mine.txt", "x")),
        [],
        ["cmp/finetune' is not a retain run directory"],
    ),
    (
        "compare-root-config-garbled",
        "cmp",
        write("cmp/config.resolved.yaml", ": : :\n\t-"),
        [],
        ["config.resolved.yaml' cannot be used"],
    ),
]


@pytest.mark.parametrize(
    ("target", "damage", "extra", "needles"),
    [c[1:] for c in COMPARE_CASES],
    ids=[c[0] for c in COMPARE_CASES],
)
def test_a_comparison_resumes_only_itself_unchanged(capsys, work, target, damage, extra, needles):
    if damage is not None:
        damage(work)
    argv = [a.format(cfg=work / "exp.yaml", cmp=work / target) for a in COMPARE] + extra
    refused(capsys, argv, *needles, keep=[work])


@pytest.mark.parametrize("command", ["run", "compare"])
def test_resume_without_out_is_refused(capsys, tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    cfg = put(tmp_path, "exp.yaml", BASE)
    argv = [command, str(cfg), "--resume", "-q"]
    if command == "compare":
        argv += ["--strategies", "finetune"]
    refused(capsys, argv, "--resume", "--out", keep=[tmp_path])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp.yaml"]  # no runs/ made


PACKAGE_CASES = [
    (
        "package-state-rows-cut",
        lambda p: edit_json(
            p / "checkpoints/task-0002/state.json", lambda x: x.update(rows=x["rows"][:2])
        ),
        ["package", "state.json' cannot be used", "rows holds 2"],
    ),
    (
        "package-weights-cut-short",
        truncate("checkpoints/task-0002/model.safetensors", 100),
        ["package", "model.safetensors' cannot be used", "100 bytes"],
    ),
    (
        "package-latest-garbled",
        lambda p: (p / "checkpoints/LATEST.json").write_text("{"),
        None,  # an intact checkpoint folder is still found: the gate runs
    ),
]


@pytest.mark.parametrize(
    ("damage", "needles"), [c[1:] for c in PACKAGE_CASES], ids=[c[0] for c in PACKAGE_CASES]
)
def test_a_damaged_package_checkpoint_is_refused(capsys, work, damage, needles):
    damage(work / "pkg")
    argv = ["gate", str(work / "run" / ".." / "pkg"), str(work / "pkg")]
    if needles is None:
        assert main(argv) == 0
        return
    refused(capsys, argv, *needles, keep=[work])
