"""The real-data benchmark's report (benchmarks/real_data.py): means, and seed-by-seed verdicts
that say where pyrovae loses."""

import importlib.util
from pathlib import Path

import pandas as pd
import pytest


@pytest.fixture(scope="module")
def real_data():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "real_data.py"
    spec = importlib.util.spec_from_file_location("real_data", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _scores(rows):
    frame = pd.DataFrame(rows, columns=["seed", "method", "score"])
    return frame.assign(dataset="d", protocol="hidden")


def test_seeds_ahead_pairs_by_seed_and_skips_unpaired_seeds(real_data):
    frame = _scores(
        [
            (0, "pyrovae NBVAE", -1.0),
            (0, "scVI", -1.1),
            (1, "pyrovae NBVAE", -1.3),
            (1, "scVI", -1.2),
            (2, "pyrovae NBVAE", -0.9),  # scVI has no seed 2: not a pair
        ]
    )
    assert real_data.seeds_ahead(frame, "pyrovae NBVAE", "scVI") == (1, 2)
    assert real_data.seeds_ahead(frame, "scVI", "pyrovae NBVAE") == (1, 2)


def test_report_says_where_pyrovae_loses(real_data):
    frame = _scores(
        [
            (0, "pyrovae PVAE", -1.0),
            (1, "pyrovae PVAE", -1.0),
            (0, "pyrovae NBVAE", -2.0),
            (1, "pyrovae NBVAE", -0.5),
            (0, "scVI", -0.8),
            (1, "scVI", -0.9),
        ]
    )
    text = real_data.report(frame, None)
    # best pyrovae model by mean: NBVAE (-1.25) vs PVAE (-1.0) -> PVAE; scVI's mean is -0.85
    assert (
        "Best pyrovae model: pyrovae PVAE; it LOSES to scVI (-0.1500; ahead in 0 of 2 seeds)"
        in text
    )
    assert (
        "Seed by seed against scVI (same split): PVAE ahead in 0 of 2, NBVAE ahead in 1 of 2."
        in text
    )
    assert "| scVI | −0.8500 ± 0.0707 | 2 |" in text


def test_a_row_with_fewer_seeds_is_compared_on_its_own_seeds(real_data):
    frame = _scores(
        [
            (0, "pyrovae PVAE", -1.0),
            (1, "pyrovae PVAE", -1.4),
            (0, "pyrovae user prior", -1.1),  # one seed: its mean beats PVAE's, its seed does not
        ]
    )
    text = real_data.report(frame, None)
    assert "Best pyrovae model: pyrovae PVAE" in text
    assert (
        "pyrovae user prior has 1 of 2 seeds; on the same seeds pyrovae PVAE scores −1.0000 "
        "against its −1.1000." in text
    )


def test_seeds_ahead_of_lists_every_pyrovae_model_best_mean_first(real_data):
    frame = _scores(
        [
            (0, "pyrovae NBVAE", -1.0),
            (1, "pyrovae NBVAE", -1.3),
            (0, "pyrovae PVAE", -0.9),
            (1, "pyrovae PVAE", -1.0),
            (0, "scVI", -1.1),
            (1, "scVI", -1.2),
        ]
    )
    assert real_data.seeds_ahead_of(frame, "scVI") == [
        ("pyrovae PVAE", 2, 2),
        ("pyrovae NBVAE", 1, 2),
    ]


def test_close_lead_only_when_the_lead_is_below_the_seed_to_seed_sd(real_data):
    rows = [(0, "pyrovae NBVAE", -1.00), (1, "pyrovae NBVAE", -1.02)]  # mean -1.01, sd 0.014
    close = _scores(rows + [(0, "scVI", -1.02), (1, "scVI", -1.01)])  # mean -1.015: close
    first, second, lead, sd, ahead, paired = real_data.close_lead(close)
    assert (first, second, ahead, paired) == ("pyrovae NBVAE", "scVI", 1, 2)
    assert lead == pytest.approx(0.005) and sd == pytest.approx(0.02 / 2**0.5)
    clear = _scores(rows + [(0, "scVI", -1.10), (1, "scVI", -1.11)])  # 0.095 behind: not close
    assert real_data.close_lead(clear) is None
    # a row with fewer seeds is left out of the ranking
    fewer = _scores(rows + [(0, "scVI", -1.10), (1, "scVI", -1.11), (0, "NMF", -0.5)])
    assert real_data.close_lead(fewer) is None
    assert real_data.close_lead(_scores(rows)) is None  # one method: nothing to compare
