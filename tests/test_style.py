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


def test_table_text_longer_than_its_column_wraps_onto_lines_that_fit_and_the_figure_grows():
    long = ("ViT, patch 4 (8x8 grid), width 128, 6 blocks, 4 heads; pre-trained without labels by masked patch "
            "prediction for 20 epochs (its classifier head is untrained: fine-tune it with --init)")
    columns = [["vit_tiny_c10 ← mpp:vit_tiny_c10_mpp", "b"], [long, "short"], ["no head; masked colours 53.5%", "1"]]
    widths, width = [1.4, 4.0, 1.2], 700
    fig = style.table(["model", "architecture", "CIFAR-10 test accuracy"], columns, widths, width)
    cells = fig.data[0].cells.values
    for column, drawn, w in zip(columns, cells, widths):
        room = (width - 20) * w / sum(widths) - 16  # the column's pixels inside its padding
        for text, shown in zip(column, drawn):
            lines = shown.split("<br>")
            assert all(len(line) * style.TABLE_CHAR_PX <= room for line in lines), (room, lines)
            assert " " not in shown and shown.replace("<br>", "").replace("\xa0", "") == text.replace(" ", "")
    assert cells[1][0].count("<br>") >= 2 and cells[1][1] == "short"
    one_line = style.table(["a"], [["x", "y"]], [1.0], 300)
    assert one_line.layout.height == 84 + 2 * 28  # a table of short texts keeps its size
    lines = cells[1][0].count("<br>") + 1
    assert fig.data[0].cells.height >= 28 + 15 * (lines - 1)  # each added line adds room, in every row
    assert fig.layout.height >= 84 + 2 * fig.data[0].cells.height


def test_outline_draws_what_add_shape_draws_in_each_subplot():
    from plotly.subplots import make_subplots

    from vitlab.views.style import outline

    rects = [(0.5, 1.5, 2.5, 3.5, 1, 1), (-0.5, 3.5, 0, 4, 2, 2), (1, 2, 3, 4, 1, 2)]
    line = dict(color="red", width=1)
    expected, fig = make_subplots(rows=2, cols=2), make_subplots(rows=2, cols=2)
    expected.add_shape(type="line", x0=0, x1=1, y0=0, y1=1, row=2, col=1)  # one already there stays first
    fig.add_shape(type="line", x0=0, x1=1, y0=0, y1=1, row=2, col=1)
    for x0, x1, y0, y1, row, col in rects:
        expected.add_shape(type="rect", x0=x0, x1=x1, y0=y0, y1=y1, line=line, row=row, col=col)
    outline(fig, rects, line)
    assert fig.to_plotly_json()["layout"]["shapes"] == expected.to_plotly_json()["layout"]["shapes"]
