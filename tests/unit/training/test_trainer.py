"""The Trainer loop with a tiny network and synthetic batches: epochs, budget, checkpoints, resume."""

import contextlib
import itertools
import json

import numpy as np
import pytest
import torch

from autoseg.schema.training import TrainConfig
from autoseg.training.callbacks import CheckpointCallback, JsonlLogCallback, ProgressPlotCallback
from autoseg.nn.checkpoint import load_checkpoint
from autoseg.workspace import FoldPaths
from autoseg.training.schedule import epochs_that_fit, plan_budget, poly_lr
from autoseg.training.trainer import Callback, Trainer, TrainState


def batches(seed):
    rng = np.random.default_rng(seed)
    while True:
        seg = (rng.random((2, 1, 8, 8)) > 0.5).astype(np.int8)
        data = (seg.astype(np.float32) * 2 - 1) + 0.1 * rng.standard_normal((2, 1, 8, 8)).astype(np.float32)
        yield {"data": data, "target": [seg]}


def ce(output, targets):
    out = output[0] if isinstance(output, list) else output
    return torch.nn.functional.cross_entropy(out, targets[0][:, 0].long())


def make_trainer(tmp_path, epochs=3, budget=None, state=None, callbacks=True, extra_callbacks=()):
    gen = torch.Generator().manual_seed(0)
    model = torch.nn.Conv2d(1, 2, 3, padding=1)
    with torch.no_grad():
        model.weight.copy_(torch.randn(model.weight.shape, generator=gen) * 0.1)
    cfg = TrainConfig("D", "2d", "0", "sha", epochs=epochs, iterations_per_epoch=5, validation_iterations=2,
                      budget_minutes=budget, checkpoint_every=1)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.learning_rate, momentum=0.9, nesterov=True)
    st = state or TrainState(cfg.epochs, cfg.iterations_per_epoch, cfg.validation_iterations)
    cbs = [CheckpointCallback(FoldPaths(tmp_path), 1), JsonlLogCallback(tmp_path / "log.jsonl"),
           ProgressPlotCallback(tmp_path / "progress.png")] if callbacks else []
    # the streams resume at the state's position, as the real loaders do (their first_batch)
    train = itertools.islice(batches(1), st.batches_drawn, None)
    val = itertools.islice(batches(2), st.val_batches_drawn, None)
    return Trainer(model=model, loss=ce, optimizer=opt, train_batches=train, val_batches=val, config=cfg,
                   state=st, device=torch.device("cpu"), precision="fp32", channels_last=False, num_classes=2,
                   autocast=lambda d, p: contextlib.nullcontext(), callbacks=[*cbs, *extra_callbacks],
                   progress=False)


def test_fit_learns_and_writes_checkpoints_logs_and_plot(tmp_path):
    t = make_trainer(tmp_path, epochs=4)
    st = t.fit()
    assert st.epoch == 4 and st.batches_drawn == 20 and st.val_batches_drawn == 8
    assert t.history[-1].train_loss < t.history[0].train_loss
    assert t.history[-1].pseudo_dice[0] > 0.8
    for name in ("checkpoint_best.pt", "checkpoint_final.pt", "progress.png", "log.jsonl"):
        assert (tmp_path / name).is_file()
    assert not (tmp_path / "checkpoint_latest.pt").exists()
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert [json.loads(l)["epoch"] for l in lines] == [0, 1, 2, 3]
    assert t.history[-1].learning_rate < t.history[0].learning_rate  # poly decay


def test_resume_drops_log_lines_after_the_checkpoint(tmp_path):
    t = make_trainer(tmp_path, epochs=2)
    t.fit()
    ckpt = load_checkpoint(tmp_path / "checkpoint_final.pt", plans_sha256="sha")
    st = TrainState(**json.loads(ckpt["state"]))
    st.epoch = 1  # pretend the run was killed after epoch 1 and a log line of epoch 2 was already written
    st.total_epochs = 3
    t2 = make_trainer(tmp_path, epochs=3, state=st)
    t2.model.load_state_dict(ckpt["model"])
    t2.fit()
    assert [json.loads(l)["epoch"] for l in (tmp_path / "log.jsonl").read_text().splitlines()] == [0, 1, 2]


class _KilledAfter(Callback):
    """Stops the run after an epoch, after the checkpoint callback saved it (like a kill then)."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, trainer, log):
        if trainer.state.epoch == self.epoch:
            raise KeyboardInterrupt


def test_resume_is_bit_exact_without_an_rng_state_so_checkpoints_save_none(tmp_path):
    """Training draws nothing from torch's global generator (initial weights are seeded apart, batches come from
    seeded streams at the state's position), so a resumed run equals an uninterrupted one whatever that generator
    holds; checkpoints used to save it without any resume restoring it, a guarantee they did not give."""
    for name in ("full", "killed"):
        (tmp_path / name).mkdir()
    torch.manual_seed(0)
    full = make_trainer(tmp_path / "full", epochs=3)
    before = torch.get_rng_state()
    full.fit()
    assert torch.equal(torch.get_rng_state(), before)

    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        make_trainer(tmp_path / "killed", epochs=3, extra_callbacks=[_KilledAfter(2)]).fit()
    ckpt = load_checkpoint(tmp_path / "killed" / "checkpoint_latest.pt", plans_sha256="sha")
    assert "torch_rng" not in ckpt
    st = TrainState(**json.loads(ckpt["state"]))
    assert st.epoch == 2
    torch.manual_seed(12345)  # a new process: another state of the global generator
    resumed = make_trainer(tmp_path / "killed", epochs=3, state=st)
    resumed.model.load_state_dict(ckpt["model"])
    resumed.optimizer.load_state_dict(ckpt["optimizer"])
    resumed.fit()
    final = load_checkpoint(tmp_path / "killed" / "checkpoint_final.pt", plans_sha256="sha")
    assert "torch_rng" not in final
    expected = full.model.state_dict()
    assert all(torch.equal(t, expected[k]) for k, t in resumed.model.state_dict().items())


def test_checkpoint_from_other_plans_is_refused(tmp_path):
    make_trainer(tmp_path, epochs=1).fit()
    from autoseg.errors import AutosegError
    with pytest.raises(AutosegError, match="other plans"):
        load_checkpoint(tmp_path / "checkpoint_final.pt", plans_sha256="different")


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    make_trainer(tmp_path, epochs=1).fit()
    p = tmp_path / "checkpoint_final.pt"
    p.write_bytes(p.read_bytes()[:100])
    from autoseg.errors import AutosegError
    with pytest.raises(AutosegError, match="not a readable checkpoint"):
        load_checkpoint(p)


def test_budget_sets_the_number_of_epochs(tmp_path):
    t = make_trainer(tmp_path, epochs=1000, budget=0.02, callbacks=False)  # 1.2 s
    st = t.fit()
    assert st.calibrated and 1 <= st.epoch < 1000
    assert st.train_seconds < 1.2 * 3


def test_a_budget_counts_the_time_of_the_callbacks_too(tmp_path):
    """Short epochs with a slow checkpoint/plot in between: the run still ends near its budget (it overran by half
    on Hippocampus when only the steps were counted)."""
    import time

    class Slow(Callback):
        def on_epoch_end(self, trainer, log):
            time.sleep(0.3)

    t = make_trainer(tmp_path, epochs=1000, budget=0.05, callbacks=False, extra_callbacks=[Slow()])  # 3 s
    start = time.perf_counter()
    t.fit()
    assert time.perf_counter() - start < 3.0 + 2 * 0.3 + 1.0  # the budget, the last epoch's callback, slack


@pytest.mark.parametrize("epoch, total, expected", [(0, 10, 0.01), (10, 10, 0.0), (5, 10, 0.01 * 0.5 ** 0.9)])
def test_poly_lr(epoch, total, expected):
    assert poly_lr(0.01, epoch, total) == pytest.approx(expected)


@pytest.mark.parametrize("budget, step, expect_iters, expect_epochs", [
    (1200, 1.0, 30, 37),      # 20 min at 1 s/step: 40 epochs of 30 steps minus validation time
    (60, 2.0, 10, 2),         # tiny budget: at least 10 steps per epoch
    (10 ** 6, 0.1, 250, None),  # huge budget: capped at the configured epoch length
])
def test_plan_budget(budget, step, expect_iters, expect_epochs):
    p = plan_budget(budget, step, step / 3, 250, 50)
    assert p.iterations_per_epoch == expect_iters
    if expect_epochs is not None:
        assert p.epochs == expect_epochs
    assert p.epochs * (p.iterations_per_epoch * step + p.validation_iterations * step / 3) <= budget


def test_epochs_that_fit():
    assert epochs_that_fit(2, 100.0, 500.0) == 10
    assert epochs_that_fit(3, 100.0, 50.0) == 3


def test_training_plan_warns_when_folds_get_too_few_iterations():
    from autoseg.training.automl import Job, jobs_table, plan_jobs

    jobs = plan_jobs(["2d", "3d_fullres"], ["0", "1"], 10.0, {"2d": 2.0, "3d_fullres": 2.0})
    assert len(jobs) == 4 and all(abs(j.minutes - 10.0 * 0.85 / 4) < 1e-9 for j in jobs)
    assert "warning" in jobs_table(jobs, [])
    assert "warning" not in jobs_table(plan_jobs(["2d"], ["0"], 60.0, {"2d": 2.0}), [])


def test_the_progress_plot_costs_at_most_its_share_of_short_epochs(tmp_path, monkeypatch):
    """A redraw takes ~1 s; after 2-s epochs it took a third of a budgeted run. It is drawn once its share of the
    time since the last drawing pays for it, and always at the end (a fake clock: no dependence on the machine)."""
    import types

    from autoseg.training import callbacks

    now = [0.0]
    drawn = []

    def slow_plot(history, path):
        now[0] += 0.05  # a 50-ms drawing
        drawn.append(len(history))

    monkeypatch.setattr(callbacks, "plot_progress", slow_plot)
    monkeypatch.setattr(callbacks, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    cb = ProgressPlotCallback(tmp_path / "progress.png", share=0.1)
    trainer = types.SimpleNamespace(history=[])
    for epoch in range(40):
        now[0] += 0.01  # a 10-ms epoch
        trainer.history.append(epoch)
        cb.on_epoch_end(trainer, None)
    cb.on_train_end(trainer)
    assert drawn[0] == 1 and drawn[-1] == 40  # the first epoch, and the end
    assert len(drawn) <= 6  # 40 epochs of 10 ms = 0.4 s: about one drawing (50 ms) per 0.5 s at a share of 10%
