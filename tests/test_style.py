import plotly.graph_objects as go

from vitlab.views import style


def test_durations_say_seconds_under_a_minute():
    assert style.duration(0.4) == "0.4 s" and style.duration(42.0) == "42 s" and style.duration(59.4) == "59 s"
    assert style.duration(60.0) == "1.0 min" and style.duration(192.0) == "3.2 min"


def test_lines_the_caller_broke_are_each_wrapped_before_the_mode_bar():
    fig = style.layout(go.Figure(), "Short<br>" + "word " * 30 + "end", 520, 300)
    lines = fig.layout.title.text.split("<br>")
    limit = (520 - 190) // 9
    assert lines[0] == "Short" and len(lines) >= 4 and all(len(line) <= limit for line in lines)
    assert " ".join(lines[1:]) == ("word " * 30 + "end")  # nothing lost, words kept whole
    assert fig.layout.margin.t == 50 + 24 * (len(lines) - 1)  # the default top margin, a line more each


def test_numbers_that_round_to_zero_lose_their_minus_sign():
    assert style.number(-0.004, 2) == "0.00" and style.number(-0.006, 2) == "-0.01"
    assert style.spread_text([-0.001, -0.02, 0.0]) == "-0.01 [-0.02, 0.00]"
    assert style.spread_text([0.05, 0.052], 1, "%", 100) == "5.1% [5.0, 5.2]"
    assert style.spread_text([-0.001, 0.001]) == "0.00 [0.00, 0.00]" and style.px(14.26) == "14.3 px"
