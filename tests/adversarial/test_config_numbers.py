"""Numbers in a config: non-finite, negative, zero where a size is meant, or beyond any real
count. Each is one line naming the key, before anything is written."""

from __future__ import annotations

import pytest
from refusal import BASE, put, refused

CASES = [
    ("train.lr=.nan", "train.lr"),
    ("train.lr=.inf", "train.lr"),
    ("train.lr=-0.1", "train.lr"),
    ("train.lr=0", "train.lr"),
    ("train.epochs=0", "train.epochs"),
    ("train.epochs=.nan", "train.epochs"),
    ("train.epochs=1e30", "train.epochs"),
    ("train.epochs=2.5", "train.epochs"),
    ("train.batch_size=0", "train.batch_size"),
    ("train.batch_size=-3", "train.batch_size"),
    ("train.weight_decay=.nan", "train.weight_decay"),
    ("train.weight_decay=-1", "train.weight_decay"),
    ("train.momentum=.nan", "train.momentum"),
    ("train.momentum=1.5", "train.momentum"),
    ("train.grad_clip=-1", "train.grad_clip"),
    ("train.grad_clip=.inf", "train.grad_clip"),
    ("train.grad_accum=0", "train.grad_accum"),
    ("train.warmup=-1", "train.warmup"),
    ("train.steps=0", "train.steps"),
    ("train.steps=99999999999999999999", "train.steps"),
    ("eval.batch_size=0", "eval.batch_size"),
    ("output.keep_checkpoints=0", "output.keep_checkpoints"),
    ("model.hidden=[0]", "model.hidden"),
    ("model.hidden=[-4]", "model.hidden"),
    ("model.hidden=[16.5]", "model.hidden"),
    ("model.dropout=1.0", "model.dropout"),
    ("model.dropout=.nan", "model.dropout"),
    ("stream.n_tasks=0", "stream.n_tasks"),
    ("stream.test_fraction=1.5", "stream.test_fraction"),
    ("stream.test_fraction=0", "stream.test_fraction"),
    ("stream.validation=-0.1", "stream.validation"),
    ("stream.limit_train=0", "stream.limit_train"),
    ("stream.limit_train=1e30", "stream.limit_train"),
    ("seed=.nan", "seed"),
    ("seed=-1", "seed"),
    ("seeds=[0,18446744073709551616]", "seeds"),
    ("strategies=[{name: ewc, lam: .nan}]", "lam"),
    ("strategies=[{name: ewc, lam: -1}]", "lam"),
    ("strategies=[{name: ewc, lam: .inf}]", "lam"),
    ("strategies=[{name: replay, size: 0}]", "size"),
    ("strategies=[{name: replay, size: -5}]", "size"),
    ("strategies=[{name: replay, size: 1e30}]", "size"),
    ("strategies=[{name: lwf, temperature: 0}]", "temperature"),
    ("strategies=[{name: lwf, alpha: .nan}]", "alpha"),
]


@pytest.mark.parametrize("override, key", CASES, ids=[c[0] for c in CASES])
def test_bad_number_is_one_line(capsys, tmp_path, override, key):
    cfg = put(tmp_path, "exp.yaml", BASE)
    out = tmp_path / "run"
    refused(capsys, ["run", str(cfg), "--out", str(out), "-q", override], key, keep=[cfg])
    assert not out.exists()
