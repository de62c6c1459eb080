"""Charts for report files, for any automation that draws one: matplotlib figures as inline SVG whose
bytes depend on the data alone (a fixed hash salt for the element ids, no date metadata, text kept as
text in one bundled font), so a rerun over unchanged data rewrites a byte-identical file.

    with chart_style():
        figure = Figure(figsize=(8.0, 3.4), layout="constrained")
        ...  # draw
        svg = inline_svg(figure)

matplotlib is imported when a chart is drawn, never when this module is imported (DAG files import
report modules at parse time).
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

# The rc settings every report chart is drawn and saved under. The hash salt is what makes the SVG's
# element ids the same from run to run; changing it changes every chart's bytes once.
CHART_RC: Mapping[str, Any] = {
    "svg.hashsalt": "batchkit-report",
    "svg.fonttype": "none",
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
}


@contextmanager
def chart_style(**overrides: Any) -> Iterator[None]:
    """matplotlib's rc_context with CHART_RC (and `overrides`): draw AND save the figure inside it."""
    from matplotlib import rc_context

    with rc_context({**CHART_RC, **overrides}):
        yield


def inline_svg(figure: Any) -> str:
    """The figure as an <svg> element for inline HTML (no XML declaration, no DOCTYPE, no date)."""
    out = io.StringIO()
    figure.savefig(out, format="svg", metadata={"Date": None})
    svg = out.getvalue()
    return svg[svg.index("<svg") :].strip()
