"""api.charts: the SVG parses, carries its points, titles and labels, and escapes text."""
from __future__ import annotations

import xml.etree.ElementTree as ET

from api.charts import STATUS_COLOURS, Cell, Series, line_chart, sparkline, status_grid

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
