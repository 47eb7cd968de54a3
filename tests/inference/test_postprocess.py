"""Separating touching cells (unet.inference.postprocess) and its evaluate.py flags."""
import json

import numpy as np
import pytest
from scipy import ndimage

import evaluate
from unet.inference.postprocess import CellSplitting, split_cells, thin_membranes
from test_evaluate import checkpoint, dataset, one_line_error, run  # noqa: F401 (fixture)


def two_cells_with_a_gap(gap_probability=0.6):
    """(40, 60) cell probability: two 40x29 cells, a 2-pixel membrane between them with a
    one-pixel gap that a 0.5 threshold fills."""
    probability = np.full((40, 60), 0.99, np.float32)
    probability[:, 29:31] = 0.05
    probability[20, 29:31] = gap_probability
    return probability


def components(cells):
    return ndimage.label(cells)[1]


def test_a_one_pixel_gap_merges_under_a_threshold_and_is_cut_by_splitting():
    probability = two_cells_with_a_gap()
    thresholded = probability >= 0.5
    assert components(thresholded) == 1
    split = split_cells(probability, 0.5, CellSplitting(min_hole_size=0))
    assert components(split) == 2
    changed = np.argwhere(split != thresholded)
    assert len(changed) == 1 and changed[0][0] == 20  # one pixel of the gap turned membrane
    assert not (split & ~thresholded).any()           # nothing turned to cell


def one_cell_with_two_cores(dip):
    """(40, 60) cell probability: one cell, 0.99 but for a column of ``dip`` across its middle
    that separates two cores of 0.99 (seeds at 0.95)."""
    probability = np.full((40, 60), 0.99, np.float32)
    probability[:, 29:31] = dip
    return probability


def test_seeds_across_a_weak_boundary_merge_and_a_true_membrane_stays():
    merging = CellSplitting(min_hole_size=0, merge_threshold=0.3)
    weak = one_cell_with_two_cores(dip=0.9)          # membrane probability 0.1 between cores
    assert components(split_cells(weak, 0.5, CellSplitting(min_hole_size=0))) == 2
    merged = split_cells(weak, 0.5, merging)
    np.testing.assert_array_equal(merged, weak >= 0.5)           # one cell, nothing drawn
    # A true membrane with a one-pixel gap (membrane probability 0.95 and 0.4) is still cut.
    probability = two_cells_with_a_gap()
    assert components(split_cells(probability, 0.5, merging)) == 2
    # Above the boundary's mean, the weak one is cut too.
    assert components(split_cells(weak, 0.5, CellSplitting(min_hole_size=0,
                                                           merge_threshold=0.05))) == 2


def test_merging_is_transitive_over_a_chain_of_weak_boundaries():
    probability = np.full((30, 91), 0.99, np.float32)
    probability[:, 29:31] = probability[:, 59:61] = 0.9      # three cores, two weak boundaries
    probability[:, 89:] = 0.02                               # and a true membrane at the right
    options = CellSplitting(min_hole_size=0, min_seed_size=50, merge_threshold=0.3)
    assert components(split_cells(probability, 0.5, CellSplitting(min_hole_size=0,
                                                                  min_seed_size=50))) == 3
    assert components(split_cells(probability, 0.5, options)) == 1


def test_cores_below_the_seed_size_or_threshold_leave_the_threshold_alone():
    probability = two_cells_with_a_gap()
    thresholded = probability >= 0.5
    too_small = CellSplitting(min_seed_size=40 * 29 + 1, min_hole_size=0)
    too_strict = CellSplitting(seed_threshold=0.995, min_hole_size=0)
    for options in (too_small, too_strict):
        assert np.array_equal(split_cells(probability, 0.5, options), thresholded)


def test_a_cell_without_seed_keeps_its_pixels():
    probability = np.full((40, 90), 0.99, np.float32)
    probability[:, 29:31] = probability[:, 59:61] = 0.05
    probability[:, 31:59] = 0.7  # a faint middle cell: no core above 0.95
    split = split_cells(probability, 0.5, CellSplitting(min_hole_size=0))
    assert split[:, 31:59].all()
    assert components(split) == 3


def test_small_membrane_specks_inside_a_cell_become_cell():
    probability = np.full((50, 50), 0.99, np.float32)
    probability[10:13, 10:13] = 0.1   # 9 pixels
    probability[30:34, 30:34] = 0.1   # 16 pixels
    filled = split_cells(probability, 0.5, CellSplitting(min_hole_size=9))
    assert filled[10:13, 10:13].all() and not filled[30:34, 30:34].any()
    kept = split_cells(probability, 0.5, CellSplitting(min_hole_size=0))
    assert not kept[10:13, 10:13].any()


def test_threshold_still_decides_the_membrane():
    probability = two_cells_with_a_gap(gap_probability=0.6)
    assert components(split_cells(probability, 0.7)) == 2
    assert (split_cells(probability, 0.7) == (probability >= 0.7)).all()


@pytest.mark.parametrize("kwargs, word", [
    ({"seed_threshold": 1.5}, "seed threshold"),
    ({"min_seed_size": 0}, "seed size"),
    ({"min_hole_size": -1}, "hole size"),
    ({"merge_threshold": -0.1}, "merge threshold"),
])
def test_bad_options_are_refused(kwargs, word):
    with pytest.raises(ValueError, match=word):
        CellSplitting(**kwargs)


def test_evaluate_split_cells_scores_and_records_its_options(tmp_path, capsys, checkpoint):
    dataset(tmp_path / "data", [(40, 56), (64, 31)], masked={0, 1})
    out = tmp_path / "pred"
    code, _, err = run(capsys, "--data-dir", tmp_path / "data", "--network-param", checkpoint,
                       "--output", out, "--split-cells", "--min-seed-size", "5")
    assert code == 0, err
    report = json.loads((out / "metrics.json").read_text())
    assert report["split_cells"] == {"seed_threshold": 0.95, "min_seed_size": 5,
                                     "min_hole_size": 100, "merge_threshold": None}
    assert report["mean"]["dice"] > 0.7
    code, _, err = run(capsys, "--data-dir", tmp_path / "data", "--network-param", checkpoint,
                       "--output", tmp_path / "plain")
    assert json.loads((tmp_path / "plain" / "metrics.json").read_text())["split_cells"] is None


@pytest.mark.parametrize("flags, word", [
    (["--seed-threshold", "2"], "seed threshold"),
    (["--min-seed-size", "0"], "seed size"),
    (["--min-hole-size", "-3"], "hole size"),
    (["--merge-threshold", "1.5"], "merge threshold"),
])
def test_bad_split_flags_give_one_line(tmp_path, capsys, checkpoint, flags, word):
    dataset(tmp_path / "data", [(40, 40)], masked={0})
    line = one_line_error(capsys, "--data-dir", tmp_path / "data", "--network-param",
                          checkpoint, "--split-cells", *flags)
    assert word in line


def test_a_multiclass_model_cannot_split_cells_nor_take_a_threshold():
    from unet.core.errors import InputError
    from unet.inference.segmenter import Segmenter
    with pytest.raises(InputError, match="binary model"):
        Segmenter(None, {"model": {"num_classes": 3}}, cell_splitting=CellSplitting())
    with pytest.raises(InputError, match="threshold is for a binary model"):
        Segmenter(None, {"model": {"num_classes": 3}}, threshold=0.9)


@pytest.mark.parametrize("flags", [["--seed-threshold", "0.9"], ["--min-seed-size", "-3"],
                                   ["--min-hole-size", "5", "--seed-threshold", "0.5"]])
def test_split_flags_without_split_cells_are_refused(tmp_path, capsys, checkpoint, flags):
    dataset(tmp_path / "data", [(40, 40)], masked={0})
    line = one_line_error(capsys, "--data-dir", tmp_path / "data", "--network-param",
                          checkpoint, *flags)
    assert "only apply with --split-cells" in line and flags[0] in line


def test_membrane_at_the_border_and_diagonal_membranes_are_never_filled():
    from unet.inference.postprocess import fill_membrane_specks
    cells = np.ones((30, 30), bool)
    cells[:, 14] = False                       # 30 pixels, touching the border
    assert np.array_equal(fill_membrane_specks(cells, 100), cells)
    diamond = np.ones((30, 30), bool)     # a one-pixel diagonal ring of 40 pixels, inside
    rows, cols = np.mgrid[:30, :30]
    diamond[np.abs(rows - 15) + np.abs(cols - 15) == 10] = False
    assert components(diamond) == 2
    assert np.array_equal(fill_membrane_specks(diamond, 39), diamond)
    assert fill_membrane_specks(diamond, 40).all()
    ring = np.ones((30, 30), bool)
    ring[10, 10:20] = ring[19, 10:20] = ring[10:20, 10] = ring[10:20, 19] = False
    assert np.array_equal(fill_membrane_specks(ring, 35), ring)       # 36 pixels: kept
    assert fill_membrane_specks(ring, 36).all()                      # at most 36: filled


def test_thin_membranes_meets_at_one_pixel_lines_in_the_membranes_middle():
    cells = np.ones((20, 41), bool)
    cells[:, 15:26] = False                      # an 11-pixel membrane, middle column 20
    cells[5:8, 30:33] = False                    # a speck inside the right cell
    labels = thin_membranes(cells)
    assert set(np.unique(labels)) == {0, 1, 2}
    assert (labels[:, 20] == 0).all() and (labels == 0).sum() == 20
    assert len(np.unique(labels[:, :20])) == 1 and len(np.unique(labels[:, 21:])) == 1
    assert not thin_membranes(np.zeros((5, 5), bool)).any()
