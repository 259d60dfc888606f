"""The sweep plot: one curve per (checkpoint, method), N:M patterns named in the legend, a legend
that hides no point, a title that says what was pruned. Read back from the figure, not pixels."""
import pytest

from ffcv_cram.sweep.plot import draw, plot, plot_series, plot_title

SPARSITIES = [0.5, 0.7, 0.9]


def _rows(bnt=True):
    """Two checkpoints, global and uniform at the same sparsities (the case that zig-zagged), and
    2:4 and 4:8 (both at 50 %)."""
    rows = []
    for c, label in enumerate(["CrAM+", "SGD"]):
        for m, method in enumerate(["global", "uniform"]):
            for s in SPARSITIES:
                rows.append(dict(label=label, method=method, sparsity=s, pattern=None,
                                 dense_top1=90.0 + c, pruned_top1=80 - 10 * s - m - c,
                                 bnt_top1=(85 - 5 * s - m - c) if bnt else None,
                                 dense_layers=["conv1.weight", "fc.weight"] if method == "uniform" else []))
        for p, pattern in enumerate(["2:4", "4:8"]):
            rows.append(dict(label=label, method="nm", sparsity=0.5, pattern=pattern,
                             dense_top1=90.0 + c, pruned_top1=50.0 + p + c,
                             bnt_top1=(70.0 + p + c) if bnt else None, dense_layers=[]))
    return rows


def test_one_curve_per_checkpoint_and_method_with_the_rows_values():
    rows = _rows()
    series = {s.label: s for s in plot_series(rows)}
    assert len(series) == len(plot_series(rows))  # every legend entry is distinct
    for r in rows:
        name = f"{r['label']} {r['pattern'] or r['method']}"
        pruned, tuned = series[f"{name} pruned"], series[f"{name} + BNT"]
        i = pruned.x.index(100 * r["sparsity"])
        assert pruned.y[i] == r["pruned_top1"] and tuned.y[i] == r["bnt_top1"]
        assert pruned.color == tuned.color == series[f"{r['label']} dense"].color
    for label in ["CrAM+", "SGD"]:
        for method in ["global", "uniform"]:
            curve = series[f"{label} {method} pruned"]
            assert list(curve.x) == [100 * s for s in SPARSITIES]  # one point per sparsity, in order
            assert curve.linestyle == "--" and series[f"{label} {method} + BNT"].linestyle == "-"
        for pattern in ["2:4", "4:8"]:
            point = series[f"{label} {pattern} + BNT"]
            assert point.x == (50.0,) and point.linestyle == ""  # a marker, not a line
    # each method and pattern has its own marker, the same for both checkpoints
    markers = {name: series[f"CrAM+ {name} pruned"].marker for name in ["global", "uniform", "2:4", "4:8"]}
    assert len(set(markers.values())) == 4
    assert all(series[f"SGD {n} pruned"].marker == m for n, m in markers.items())
    assert series["CrAM+ global pruned"].color != series["SGD global pruned"].color


def test_the_figure_draws_those_series_and_the_legend_hides_nothing():
    rows = _rows()
    fig = draw(rows, "resnet20")
    ax = fig.axes[0]
    drawn = {line.get_label(): line for line in ax.get_lines()}
    for s in plot_series(rows):
        line = drawn[s.label]
        if s.x:
            assert tuple(line.get_xdata()) == s.x and tuple(line.get_ydata()) == s.y
            assert line.get_marker() == s.marker
        else:
            assert tuple(line.get_ydata()) == (s.y[0], s.y[0])  # axhline of the dense accuracy
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == [s.label for s in plot_series(rows)]
    assert "CrAM+ 2:4 + BNT" in drawn and "SGD uniform pruned" in drawn
    assert not ax.texts  # patterns are named in the legend: no annotations to collide
    fig.canvas.draw()
    assert not legend.get_window_extent().overlaps(ax.get_window_extent())  # beside the axes
    title = ax.get_title()
    assert "resnet20" in title and "global, uniform, N:M 2:4, N:M 4:8" in title
    assert "uniform keeps conv1, fc dense" in title and "batch-norm tuning (BNT)" in title


def test_without_batch_norm_tuning_only_pruned_series_and_the_title_says_so():
    rows = _rows(bnt=False)
    labels = [s.label for s in plot_series(rows)]
    assert not [label for label in labels if "BNT" in label]
    assert "CrAM+ global pruned" in labels and "SGD 4:8 pruned" in labels
    assert plot_title(rows).endswith("pruned, no batch-norm tuning")


def test_plot_writes_a_png_and_leaves_no_temporary_file(tmp_path):
    pytest.importorskip("PIL")
    from PIL import Image
    path = tmp_path / "accuracy_vs_sparsity.png"
    plot(_rows(), str(path), "resnet20")
    assert Image.open(path).format == "PNG"
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
