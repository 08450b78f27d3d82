"""Level of detail for large maps (embedviz.lod): what a view sends, and the word search."""

from __future__ import annotations

import numpy as np

from embedviz.lod import MapLOD, WordSearch


def test_a_view_with_few_points_sends_all_of_them_in_priority_order():
    coords = np.array([[0, 0], [1, 1], [0.5, 0.5], [5, 5]], dtype=float)
    lod = MapLOD(coords, ["#ff0000"] * 4, np.array([3, 2, 1, 0]))
    image, shown = lod.view(0, 1, 0, 1, 10, 10, limit=5)
    assert image is None and shown.tolist() == [2, 1, 0]  # (the point at 5, 5 is outside)


def test_a_crowded_view_is_an_image_of_mean_colours_and_the_most_important_points():
    rng = np.random.default_rng(0)
    left = rng.uniform([0, 0], [0.5, 1], (3000, 2))
    right = rng.uniform([0.5, 0], [1, 1], (1000, 2))
    coords = np.concatenate([left, right])
    colours = ["#ff0000"] * 3000 + ["#0000ff"] * 1000
    priority = np.arange(4000)[::-1]  # (the blue ones first)
    lod = MapLOD(coords, colours, priority)
    image, shown = lod.view(0, 1, 0, 1, 4, 2, limit=100)
    assert image is not None and image.shape == (2, 4) and image.dtype == np.uint32
    red, blue = image[:, :2], image[:, 2:]
    assert ((red & 0xFF) == 255).all() and (((red >> 16) & 0xFF) == 0).all()
    assert ((blue & 0xFF) == 0).all() and (((blue >> 16) & 0xFF) == 255).all()
    assert ((red >> 24) > (blue >> 24)).all()  # (three times as dense: more opaque)
    assert len(shown) == 100 and (shown >= 3000).all()  # (the first 100 by priority)
    lod.recolour(["#00ff00"] * 4000)
    image, _ = lod.view(0, 1, 0, 1, 4, 2, limit=100)
    assert (((image >> 8) & 0xFF) == 255).all()


def test_the_word_search_ignores_case_and_never_matches_across_two_words():
    search = WordSearch(["Paris", "paris", "comparison", "ab", "cd", "<b>x</b>"])
    assert search.find("PARIS") == ([0, 1, 2], 0)
    assert search.find("bc") == ([], -1)  # ("ab" + "cd" are two words)
    assert search.find("b>") == ([5], -1)
    assert search.find("") == ([], -1)
    assert search.find("ompar") == ([2], -1)
