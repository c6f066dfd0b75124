import io

import pytest

from maskrcnn.progress import format_seconds, progress_line, track


def test_lines_mode_prints_first_periodic_and_last_lines_with_an_eta():
    out = io.StringIO()
    assert list(track(range(5), "predict", mode="lines", every=0.0, file=out)) == [0, 1, 2, 3, 4]
    lines = out.getvalue().splitlines()
    assert len(lines) == 5 and lines[0].startswith("predict: 1/5 img (20%), ")
    assert all("ETA" in line for line in lines[:-1]) and "ETA" not in lines[-1]
    assert lines[-1].startswith("predict: 5/5 img (100%)")
    out = io.StringIO()
    list(track(range(5), "x", mode="lines", every=3600.0, file=out))  # the first and the last only
    assert [line.split(",")[0] for line in out.getvalue().splitlines()] == ["x: 1/5 img (20%)", "x: 5/5 img (100%)"]
    out = io.StringIO()
    list(track(iter(range(3)), "gen", mode="lines", every=3600.0, file=out))  # no length: a count, and the end
    assert [line.split(",")[0] for line in out.getvalue().splitlines()] == ["gen: 1 img", "gen: 3 img"]


def test_eta_and_time_format():
    assert progress_line("p", 30, 120, 60.0) == "p: 30/120 img (25%), 0.50 img/s, elapsed 1:00, ETA 3:00"
    assert format_seconds(3725) == "1:02:05" and format_seconds(59.6) == "1:00"


def test_off_and_bar_yield_everything_and_bad_modes_are_refused(capsys):
    assert list(track([1, 2], mode="off")) == [1, 2] and capsys.readouterr().err == ""
    assert list(track([1, 2], "b", mode="bar")) == [1, 2]
    with pytest.raises(ValueError, match="progress mode"):
        list(track([1], mode="verbose"))
