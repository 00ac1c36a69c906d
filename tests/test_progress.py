"""Progress off a terminal: a line per 5% of the work, never a redraw."""

from __future__ import annotations

import io

from alibi_lm.progress import LineBar, progress_bar


def test_a_line_bar_prints_twenty_lines_whatever_the_step_sizes():
    out = io.StringIO()
    bar = LineBar(total=37, desc="ppl@64", unit="win", file=out)
    for n in [1, 2, 3, 5, 7, 11, 8]:  # 37 in uneven steps
        bar.update(n)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    percents = [int(line.split("%")[0].split()[-1]) for line in lines]
    assert percents == sorted(percents) and percents[-1] == 100 and lines[-1].startswith("ppl@64: 100% 37/37 win")
    # A line at each update that passes a new 5% mark (none after 1 of 37); each shows where the count really is.
    assert percents == [8, 16, 30, 49, 78, 100]  # 3, 6, 11, 18, 29 and 37 of 37


def test_a_line_bar_over_many_small_steps_prints_exactly_twenty_lines():
    out = io.StringIO()
    for _ in LineBar(range(1000), desc="training", file=out):
        pass
    lines = out.getvalue().splitlines()
    assert len(lines) == 20 and lines[0].startswith("training:   5% 50/1000 it")


def test_a_line_bar_takes_tqdm_s_set_description_for_its_next_lines():
    """`alibi-lm bench` names each stage on one bar; off a terminal that crashed the bench before any row."""
    out = io.StringIO()
    bar = LineBar(total=20, desc="bench", file=out)
    bar.update(10)
    bar.set_description("bench decode")
    bar.update(10)
    lines = out.getvalue().splitlines()
    assert (
        len(lines) == 2
        and lines[0].startswith("bench:  50% 10/20")
        and lines[1].startswith("bench decode: 100% 20/20")
    )


def test_off_a_terminal_progress_bar_is_a_line_bar():
    assert isinstance(progress_bar(range(3), desc="x"), LineBar)  # pytest's stderr is not a terminal
    assert not isinstance(progress_bar(range(3), desc="x", disable=True), LineBar)
