"""``gradq metrics``' chart and CSV (api.cli.chart)."""

from __future__ import annotations

from api.cli import chart


def test_sections_group_by_the_name_before_the_slash() -> None:
    curves = {
        "loss/train": [(1, 2.0), (2, 1.0)],
        "loss/val": [(1, 2.5), (2, float("nan"))],
        "accuracy/val": [(1, 0.5), (2, 0.7)],
        "timing/epoch_seconds": [(1, 0.1)],
    }
    picked = chart.sections(curves)
    assert list(picked) == ["accuracy", "loss"]  # no timing unless asked
    assert picked["loss"]["loss/val"] == [(1, 2.5)]  # a non-finite point is left out
    assert list(chart.sections(curves, ["loss/val"])) == ["loss"]
    assert list(chart.sections(curves, ["timing"])["timing"]) == ["timing/epoch_seconds"]
    assert chart.sections(curves, ["nope"]) == {}


def test_a_chart_places_first_and_last_points_at_its_corners() -> None:
    text = chart.chart("loss", {"loss/train": [(1, 1.0), (5, 0.0)], "loss/val": [(3, 0.5)]},
                       width=20, height=5)  # fmt: skip
    lines = text.splitlines()
    assert lines[0] == "loss"
    rows = [line.split("|", 1)[1] for line in lines[1:6]]
    assert rows[0][0] == "*" and rows[4][19] == "*"  # top left, bottom right
    assert rows[2][10] == "o"  # the middle
    assert [lines[i].split("|")[0].strip() for i in (1, 3, 5)] == ["1", "0.5", "0"]
    assert lines[6].strip() == "+" + "-" * 20
    assert lines[7].split() == ["step", "1", "5"]
    assert lines[8].split() == ["*", "loss/train", "o", "loss/val"]


def test_a_flat_curve_or_one_point_is_drawn() -> None:
    text = chart.chart("acc", {"accuracy/val": [(4, 0.9)]}, width=10, height=3)
    rows = [line.split("|", 1)[1] for line in text.splitlines()[1:4]]
    assert rows == ["          ", "*         ", "          "]


def test_csv_has_a_row_per_step_and_empty_cells_where_a_metric_has_none() -> None:
    text = chart.to_csv({"loss/train": [(1, 0.5), (2, 0.25)], "final": [(2, 1.0)]})
    assert text == "step,final,loss/train\n1,,0.5\n2,1.0,0.25\n"
