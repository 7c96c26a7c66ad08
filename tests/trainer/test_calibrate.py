import numpy as np
import pytest

from trainer.calibrate import error_stats, fit_gpd, pot_threshold, quantile_threshold


def test_quantile_threshold_leaves_the_target_rate_above_it() -> None:
    s = np.random.default_rng(0).exponential(size=10_000)
    t = quantile_threshold(s, q=0.99)
    assert t.method == "quantile" and t.params["fpr"] == pytest.approx(0.01)
    assert np.mean(s > t.value) <= 0.01
    assert np.mean(s > t.value) > 0.009
    assert quantile_threshold(s, 0.99, margin=2).value == pytest.approx(2 * t.value)


def test_gpd_fit_recovers_known_parameters() -> None:
    rng = np.random.default_rng(1)
    gamma, sigma = 0.2, 1.5
    u = rng.random(20_000)
    y = sigma / gamma * ((1 - u) ** -gamma - 1)  # inverse CDF of the GPD
    g, s = fit_gpd(y)
    assert g == pytest.approx(gamma, abs=0.03)
    assert s == pytest.approx(sigma, rel=0.05)


def test_gpd_fit_exponential_tail_has_gamma_near_zero() -> None:
    g, s = fit_gpd(np.random.default_rng(2).exponential(2.0, 20_000))
    assert abs(g) < 0.03 and s == pytest.approx(2.0, rel=0.05)


def test_pot_extrapolates_beyond_the_data() -> None:
    # Exponential scores: the true 1 - 1e-5 quantile is ln(1e5) = 11.51, beyond most of
    # 20,000 samples; POT estimates it from the tail alone.
    s = np.random.default_rng(3).exponential(size=20_000)
    t = pot_threshold(s, risk=1e-5, level=0.98)
    assert t.method == "pot" and t.params["peaks"] == 400
    assert t.value == pytest.approx(np.log(1e5), rel=0.12)


def test_pot_needs_enough_peaks() -> None:
    with pytest.raises(ValueError, match="at least 5"):
        pot_threshold(np.arange(50.0), risk=1e-4, level=0.98)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="no calibration scores"):
        quantile_threshold(np.array([]))
    with pytest.raises(ValueError, match="NaN"):
        quantile_threshold(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="quantile"):
        quantile_threshold(np.ones(5), q=1.5)


def test_error_stats() -> None:
    fe = np.array([[1.0, 0.0], [3.0, 2.0]])
    st = error_stats(fe)
    assert st.mean == [2.0, 1.0] and st.std == [1.0, 1.0]
