"""plot_vocab and `embedviz tsne`: the page a person opens, rendered in a real browser."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from gensim.test.utils import datapath

from embedviz.cli import main
from embedviz.plot import place_labels, plot_vocab
from embedviz.projection import BarnesHutTsne
from embedviz.vocab import Vocabulary

LEE_VEC = datapath("lee_fasttext.vec")


def test_labels_do_not_pile_up():
    coords = np.array([[0, 0], [0.001, 0], [10, 10], [5, 5]], dtype=float)
    chosen = place_labels(coords, ["alpha", "beta", "gamma", "delta"], np.arange(4),
                          max_labels=10, width_px=400, height_px=400)
    assert 0 in chosen and 1 not in chosen and {2, 3} <= set(chosen)


def test_plot_vocab_returns_a_webgl_figure_with_escaped_tooltips(tmp_path):
    rng = np.random.default_rng(0)
    v = Vocabulary(["<script>alert(1)</script>", "cat", "dog"] + [f"w{i}" for i in range(57)],
                   rng.normal(size=(60, 8)).astype(np.float32), {"count": list(range(60, 0, -1))})
    out = tmp_path / "v.html"
    fig = plot_vocab(v, BarnesHutTsne(random_state=0, progress=False), color_by="count", output=out)
    assert fig.output_backend == "webgl"
    hover = [t for t in fig.tools if type(t).__name__ == "HoverTool"][0]
    assert ("word", "@word") in hover.tooltips  # Bokeh escapes @fields; {safe} would not
    html = out.read_text(encoding="utf-8")
    assert "<script>alert(1)</script>" not in html.split("<body>")[1].split("Bokeh.")[0]
    assert "cdn.bokeh.org" not in html  # BokehJS is inlined: the page works offline


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_the_page_renders_in_headless_chromium(tmp_path):
    from PIL import Image

    out = tmp_path / "vocab.html"
    assert main(["tsne", LEE_VEC, "-o", str(out), "--top", "300", "--seed", "0", "--color-by", "cluster"]) == 0
    png = tmp_path / "shot.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu",
                    "--disable-background-networking", "--disable-component-update",
                    "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
                    "--window-size=1000,800", "--virtual-time-budget=10000",
                    f"--screenshot={png}", out.as_uri()], check=True, capture_output=True, timeout=120)
    img = np.asarray(Image.open(png).convert("RGB")).astype(int)
    plot = img[80:700, 20:850]
    colourful = (plot.max(axis=2) - plot.min(axis=2)) > 60  # the coloured points, not grey text
    assert colourful.mean() > 0.005, "no points were drawn"
    hues = {tuple(p // 32) for p in plot[colourful]}
    assert len(hues) >= 4  # several clusters in several colours


def test_cli_names_bad_input(tmp_path, capsys):
    bad = tmp_path / "bad.vec"
    bad.write_bytes(b"99999 50\nthe 1 2\n")
    assert main(["tsne", str(bad), "-o", str(tmp_path / "x.html")]) == 2
    assert "header promises 99999 vectors" in capsys.readouterr().err
