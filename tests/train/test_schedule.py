import itertools
from dataclasses import replace

import pytest

from fournil.train.config import TrainConfig
from fournil.train.schedule import lr_at

BASE = TrainConfig(lr=1.0, min_lr_ratio=0.1, warmup_steps=10, steps=110)


def test_linear_warmup_reaches_peak():
    assert [lr_at(s, BASE) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])


def test_cosine_decays_from_peak_to_floor():
    assert lr_at(10, BASE) == pytest.approx(1.0)
    assert lr_at(109, BASE) == pytest.approx(0.1)
    assert lr_at(10 + 99 // 2, BASE) == pytest.approx(0.55, abs=0.02)  # halfway: mean of peak and floor
    values = [lr_at(s, BASE) for s in range(10, 110)]
    assert all(a >= b for a, b in itertools.pairwise(values))


def test_wsd_is_flat_then_decays_linearly():
    wsd = replace(BASE, schedule="wsd", decay_fraction=0.2)
    assert all(lr_at(s, wsd) == 1.0 for s in range(10, 88))
    assert lr_at(88, wsd) == pytest.approx(1.0)
    assert lr_at(109, wsd) == pytest.approx(0.1)
    assert lr_at(98, wsd) == pytest.approx(1.0 - 0.9 * 10 / 21)
