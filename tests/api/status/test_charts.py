"""api.status.charts: the SVG parses, carries its points, titles and labels, and escapes text."""
from __future__ import annotations

import xml.etree.ElementTree as ET

from api.status.charts import STATUS_COLOURS, Cell, Series, line_chart, sparkline, status_grid

NS = {"svg": "http://www.w3.org/2000/svg"}


def _parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert root.get("role") == "img" and root.get("aria-label")
    assert root.find("svg:title", NS) is not None
    return root


def _points(polyline: ET.Element) -> list[tuple[float, float]]:
    return [tuple(map(float, p.split(","))) for p in polyline.get("points", "").split()]


def test_line_chart_series_points_marks_and_axes() -> None:
    gecko = Series("coingecko", [(0, 100.0), (60, 110.0), (120, 105.0)], marked=[(60, 110.0)])
    consensus = Series("consensus", [(0, 101.0), (120, 104.0)], dashed=True)
    root = _parse(line_chart([gecko, consensus], "Bitcoin price", width=640, height=260))
    lines = root.findall(".//svg:polyline", NS)
    assert len(lines) == 2
    first = _points(lines[0])
    assert len(first) == 3
    # x grows with time; the highest price is drawn highest (smallest y).
    assert first[0][0] < first[1][0] < first[2][0]
    assert first[1][1] == min(y for _, y in first)
    assert lines[1].get("stroke-dasharray")
    marks = root.findall(".//svg:circle[@class='marked']", NS)
    assert len(marks) == 1
    assert float(marks[0].get("cx")) == first[1][0] and float(marks[0].get("cy")) == first[1][1]
    assert "flagged" in marks[0].find("svg:title", NS).text
    texts = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert "Bitcoin price" in texts and "price (USD)" in texts and "time (UTC)" in texts
    assert "110" in texts and "100" in texts  # y-axis max and min
    assert "coingecko" in texts and "consensus" in texts  # legend
    # Every point lies inside the viewBox.
    for x, y in first:
        assert 0 <= x <= 640 and 0 <= y <= 260


def test_text_is_escaped() -> None:
    evil = '<script>alert("x")</script> & "quotes"'
    svg = line_chart([Series(evil, [(0, 1.0), (1, 2.0)])], evil)
    root = _parse(svg)
    assert "<script>" not in svg
    assert root.find("svg:title", NS).text == evil
    assert root.find(".//svg:script", NS) is None
    grid = status_grid([(evil, [Cell("failed", evil, href='/runs/1?a="b"&c=<d>')])], evil)
    link = _parse(grid).find(".//svg:a", NS)
    assert link.get("href") == '/runs/1?a="b"&c=<d>'


def test_empty_and_flat_inputs() -> None:
    root = _parse(line_chart([], "Nothing yet"))
    assert "no data" in [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    flat = _parse(line_chart([Series("s", [(0, 5.0), (10, 5.0)])], "Flat"))
    ys = {y for _, y in _points(flat.find(".//svg:polyline", NS))}
    assert len(ys) == 1
    assert _parse(sparkline([], "empty")).find("svg:polyline", NS) is None


def test_sparkline_points() -> None:
    root = _parse(sparkline([1.0, 3.0, 2.0], "Duration trend", width=100, height=20))
    pts = _points(root.find("svg:polyline", NS))
    assert len(pts) == 3
    assert pts[1][1] < pts[2][1] < pts[0][1]  # 3 highest, 1 lowest
    assert pts[0][0] == 2 and pts[-1][0] == 98
    assert root.find("svg:circle", NS) is not None


def test_status_grid_cells_colours_and_links() -> None:
    rows = [("coingecko", [Cell("succeeded", "run 1 succeeded", "/runs/1"),
                           Cell("failed", "run 2 failed: HTTP 500", "/runs/2")]),
            ("csv", [Cell("partial", "run 3 partial")])]
    root = _parse(status_grid(rows, "Runs, last 24 h"))
    cells = root.findall(".//svg:rect[@class='cell']", NS)
    assert [c.get("data-status") for c in cells] == ["succeeded", "failed", "partial"]
    assert cells[1].get("fill") == STATUS_COLOURS["failed"]
    assert cells[1].find("svg:title", NS).text == "run 2 failed: HTTP 500"
    links = root.findall(".//svg:a", NS)
    assert [a.get("href") for a in links] == ["/runs/1", "/runs/2"]
    assert all(a.get("aria-label") for a in links)
    # Row labels are readable text.
    assert [t.text for t in root.findall("svg:text", NS)] == ["coingecko", "csv"]


def test_status_grid_rows_end_together_without_names() -> None:
    svg = status_grid([("long", [Cell("succeeded", "a")] * 4), ("short", [Cell("failed", "b")])],
                      "runs", cell=10, gap=2, label_width=0, align_end=True)
    root = ET.fromstring(svg)
    xs = {rect.get("data-status"): [float(r.get("x") or 0) for r in root.iter(
        "{http://www.w3.org/2000/svg}rect") if r.get("data-status") == rect.get("data-status")]
        for rect in root.iter("{http://www.w3.org/2000/svg}rect")}
    assert max(xs["succeeded"]) == xs["failed"][0] == 2 + 3 * 12  # both rows end in column 4
    assert not list(root.iter("{http://www.w3.org/2000/svg}text"))  # names left to the page


def test_one_point_series_is_drawn_as_a_dot() -> None:
    svg = line_chart([Series("one", [(1.0, 5.0)]), Series("two", [(0.0, 1.0), (2.0, 9.0)])],
                     "t", x_is_time=False)
    dots = [c for c in ET.fromstring(svg).iter("{http://www.w3.org/2000/svg}circle")
            if c.get("class") == "point"]
    assert len(dots) == 1


def _texts(root: ET.Element, cls: str) -> list[ET.Element]:
    return [t for t in root.iter("{http://www.w3.org/2000/svg}text") if t.get("class") == cls]


DAY = 86400.0
# Thirteen years of a price that grew 1,000x, then two API sources a cent apart at the end.
HISTORY = [(i * 30 * DAY, 100.0 * 1.045 ** i) for i in range(158)]
END = HISTORY[-1][0] + DAY


def test_a_span_past_100x_is_drawn_on_a_log_axis_of_powers_of_ten() -> None:
    root = _parse(line_chart([Series("csv", HISTORY)], "Bitcoin", width=900, height=360))
    assert root.get("data-scale") == "log"
    ticks = _texts(root, "tick")
    assert [t.text for t in ticks] == ["100", "1,000", "10,000", "100,000"]
    ys = [float(t.get("y")) for t in ticks]  # decades equally far apart, 100 lowest
    assert ys[0] > ys[1] > ys[2] > ys[3]
    assert max(ys[i] - ys[i + 1] for i in range(3)) - min(ys[i] - ys[i + 1] for i in range(3)) \
        < 0.05
    texts = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert "price (USD), log scale" in texts
    # The first eight years rise a third of the plot, not a flat line along the bottom.
    line = _points(root.find(".//svg:polyline", NS))
    first, eighth = line[0][1], line[8 * 12][1]
    assert first - eighth > 360 * 0.3


def test_an_explicit_scale_overrides_the_default() -> None:
    linear = _parse(line_chart([Series("csv", HISTORY)], "Bitcoin", scale="linear"))
    assert linear.get("data-scale") == "linear"
    assert "price (USD)" in [t.text for t in linear.iter("{http://www.w3.org/2000/svg}text")]
    values = [float(t.text.replace(",", "")) for t in _texts(linear, "tick")]
    steps = {b - a for a, b in zip(values, values[1:])}
    assert len(steps) == 1 and len(values) >= 3  # evenly spaced round values
    narrow = [(0.0, 60_000.0), (DAY, 97_000.0)]
    assert _parse(line_chart([Series("s", narrow)], "t")).get("data-scale") == "linear"
    assert _parse(line_chart([Series("s", narrow)], "t", scale="log")).get("data-scale") == "log"


def _mark_box(mark: ET.Element) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of a latest-point marker: a circle or an absolute path."""
    if mark.tag.endswith("circle"):
        cx, cy, r = (float(mark.get(a) or 0) for a in ("cx", "cy", "r"))
        return cx - r, cy - r, cx + r, cy + r
    coords = [tuple(map(float, p.split())) for p in mark.get("d", "").strip("MZ").split("L")]
    return (min(x for x, _ in coords), min(y for _, y in coords),
            max(x for x, _ in coords), max(y for _, y in coords))


def test_each_sources_latest_point_is_marked_labelled_and_apart() -> None:
    series = [Series("coingecko", [(END - DAY, 95_000.0), (END, 96_114.08)], latest=True),
              Series("coinpaprika", [(END, 96_114.09)], latest=True),
              Series("csv", HISTORY, latest=True),
              Series("consensus (median)", [(0.0, 100.0), (END, 96_114.0)], dashed=True)]
    svg = line_chart(series, "Bitcoin", width=900, height=360)
    root = _parse(svg)
    groups = {g.get("data-series"): g for g in root.iter("{http://www.w3.org/2000/svg}g")
              if g.get("class") == "latest"}
    assert set(groups) == {"coingecko", "coinpaprika", "csv"}  # not the consensus
    assert len({g.get("data-shape") for g in groups.values()}) == 3  # a shape each
    plot = root.find(".//svg:rect[@class='plot']", NS)
    left, top = float(plot.get("x")), float(plot.get("y"))
    right, bottom = left + float(plot.get("width")), top + float(plot.get("height"))
    boxes = {}
    for name, group in groups.items():
        mark = next(e for e in group if e.get("class") == "latest-mark")
        boxes[name] = box = _mark_box(mark)
        assert box[2] - box[0] >= 8 and box[3] - box[1] >= 8  # big enough to see
        centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
        assert left <= centre[0] <= right and top <= centre[1] <= bottom
        newest = _points(root.find(f".//svg:g[@data-series='{name}']/svg:polyline", NS))[-1]
        assert abs(centre[0] - newest[0]) < 0.02 and abs(centre[1] - newest[1]) < 0.02
        assert "latest" in mark.find("svg:title", NS).text
    # The two API sources sit on one spot: nested outlines of different sizes, not one dot.
    gecko, paprika = boxes["coingecko"], boxes["coinpaprika"]
    assert abs((gecko[2] - gecko[0]) - (paprika[2] - paprika[0])) >= 3
    labels = {t.text: float(t.get("y")) for t in _texts(root, "latest-label")}
    assert set(labels) == {"coingecko 96,114.08", "coinpaprika 96,114.09",
                           f"csv {HISTORY[-1][1]:,.2f}"}
    ys = sorted(labels.values())
    assert all(b - a >= 14 for a, b in zip(ys, ys[1:]))  # no label over another
    assert all(float(t.get("x")) > right for t in _texts(root, "latest-label"))
    # Drawn after every line, so no line covers a marker.
    assert svg.index('class="latest-points"') > svg.rindex("<polyline")
