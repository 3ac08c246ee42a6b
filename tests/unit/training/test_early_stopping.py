"""Early stopping on the smoothed pseudo-Dice, table-driven on scripted scores (no training needed)."""

from types import SimpleNamespace

import pytest

from autoseg.training.trainer import EarlyStopping, TrainState


def run(scores, patience, total=100, state=None):
    st = state or TrainState(total, 5, 1)
    trainer = SimpleNamespace(state=st)
    stopper = EarlyStopping(patience)
    for score in scores:
        if st.epoch >= st.total_epochs:
            break
        st.epoch += 1
        st.ema_pseudo_dice = score
        stopper.on_epoch_end(trainer, None)
    return st


@pytest.mark.parametrize("scores, patience, stopped_at, best_epoch", [
    ([0.1, 0.2, 0.3, 0.3, 0.29, 0.31, 0.2, 0.2, 0.2], 3, 9, 6),  # a plateau shorter than 3 is forgiven
    ([0.5, 0.4, 0.4, 0.4], 3, 4, 1),
    ([0.1, 0.2, 0.3, 0.4, 0.5], 2, None, 5),                           # always improving: never stops
    ([0.5, 0.5, 0.5], 1, 2, 1),                                         # equal is not an improvement
])
def test_early_stopping(scores, patience, stopped_at, best_epoch):
    st = run(scores, patience)
    assert st.best_epoch == best_epoch
    if stopped_at is None:
        assert st.stop_reason is None and st.total_epochs == 100
    else:
        assert st.epoch == st.total_epochs == stopped_at
        assert f"did not improve for {patience} epochs" in st.stop_reason
        assert f"after epoch {best_epoch}" in st.stop_reason


def test_a_resumed_run_continues_the_count():
    st = run([0.3, 0.5, 0.4], 3)  # best after epoch 2, one epoch without improvement
    resumed = TrainState(**st.to_dict())  # what a checkpoint carries, on every rank
    st = run([0.45, 0.45], 3, state=resumed)
    assert st.epoch == 5 and st.stop_reason is not None and st.best_epoch == 2


def test_patience_must_be_positive():
    with pytest.raises(ValueError):
        EarlyStopping(0)
