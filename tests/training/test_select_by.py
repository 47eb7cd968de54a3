"""--select-by: the best checkpoint chosen by the ISBI challenge's cell scores (V_Rand, V_Info)
instead of Dice; the scores in every checkpoint; resume with another choice; bad choices."""
import logging
import re

import numpy as np
import pytest

from test_train import demo, run  # noqa: F401  (demo: a fixture)
from unet.checkpoints.files import last_path, read_meta
from unet.inference.metrics import cell_fscores
from unet.training.config import TrainConfig
from unet.model.config import ModelConfig

EPOCH_LINE = re.compile(r"epoch (\d+)/\d+ .* v_rand ([0-9.]+)  v_info ([0-9.]+)")


def epoch_scores(caplog):
    """``{epoch: (v_rand, v_info)}`` of the epoch log lines."""
    found = {}
    for record in caplog.records:
        match = EPOCH_LINE.search(record.getMessage())
        if match:
            found[int(match.group(1))] = (float(match.group(2)), float(match.group(3)))
    return found


def test_the_best_checkpoint_is_the_epoch_of_the_highest_v_rand(tmp_path, demo, caplog):
    caplog.set_level(logging.INFO)
    code, ckpt = run(["--num-epochs", "4", "--epoch-size", "16", "--learning-rate", "0.01",
                      "--select-by", "v_rand"], tmp_path, demo)
    assert code == 0
    scores = epoch_scores(caplog)
    assert sorted(scores) == [1, 2, 3, 4]
    best = read_meta(ckpt)
    v_rand = {epoch: value for epoch, (value, _) in scores.items()}
    assert best["best_epoch"] == max(v_rand, key=lambda e: (v_rand[e], -e))
    assert best["best_score"] == pytest.approx(best["scores"]["v_rand"])
    assert best["best_score"] == pytest.approx(v_rand[best["best_epoch"]], abs=1e-4)
    assert best["training"]["select_by"] == "v_rand"
    for key in ("v_rand", "v_info"):
        assert 0.0 <= best["scores"][key] <= 1.0
    # Resumed to select by Dice: the V_Rand best is not compared with Dice scores.
    caplog.clear()
    code, _ = run(["--num-epochs", "5", "--epoch-size", "16", "--learning-rate", "0.01",
                   "--checkpoint", "load"], tmp_path, demo)
    assert code == 0
    assert "was chosen by validation v_rand, this run selects by dice" in caplog.text
    best = read_meta(ckpt)
    assert best["best_epoch"] == 5 and best["training"]["select_by"] == "dice"
    assert best["best_score"] == pytest.approx(best["scores"]["dice"])
    assert read_meta(last_path(ckpt))["best_epoch"] == 5


def test_cell_fscores_of_equal_split_and_merged_cells():
    target = np.zeros((8, 9), int)
    target[:, :4], target[:, 5:] = 1, 1                 # two cells, a membrane column between
    assert cell_fscores(target, target) == (1.0, 1.0)
    merged = np.ones_like(target)                        # no membrane: one cell
    v_rand, v_info = cell_fscores(merged, target)
    assert v_rand < 1.0 and v_info < 1.0
    assert np.isnan(cell_fscores(target, np.zeros_like(target))).all()   # no true cells


def test_cell_scores_need_two_classes():
    with pytest.raises(ValueError, match="select-by v_rand and v_info score the cells"):
        TrainConfig(model=ModelConfig(num_classes=3), select_by="v_rand")
    with pytest.raises(ValueError, match="select-by must be one of"):
        TrainConfig(select_by="loss")


def test_a_bad_choice_is_one_line_and_exit_2(tmp_path, demo, capsys):
    code, _ = run(["--num-classes", "3", "--select-by", "v_info"], tmp_path, demo)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "select-by v_rand and v_info" in err[0], err
