"""Progress without a terminal: a few plain lines with an ETA, not bar refreshes."""

import io

from autoseg.progress import LineProgress, bar


def test_lines_without_a_terminal():
    out = io.StringIO()  # not a terminal
    b = bar(1000, "epoch 3/40", "it", stream=out)
    assert isinstance(b, LineProgress)
    for _ in range(1000):
        b.update()
    b.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 10  # one per tenth (the last says done), however many updates
    assert lines[0].startswith("epoch 3/40: 100/1000 it, 0:00:00 elapsed, ETA") and "\r" not in out.getvalue()
    assert lines[-1].endswith("- done")


def test_silent_when_disabled_or_asked_for_no_lines():
    out = io.StringIO()
    for b in (bar(10, "x", enabled=False, stream=out), bar(10, "x", lines=False, stream=out)):
        for _ in range(10):
            b.update()
        b.close()
    assert out.getvalue() == ""


def test_a_bar_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    b = bar(5, "predict", "case", stream=Tty())
    assert type(b).__name__ == "tqdm"
    b.close()


def test_one_duration_format_for_progress_lines_and_reports():
    from autoseg import progress, report

    assert progress.hms(3725.4) == "1:02:05" and progress.hms(59) == "0:00:59" and progress.hms(0.4) == "0:00:00"
    assert report.hms is progress.hms  # the fold report's "training time" row, not a copy of it
