"""ntk_info.rational: AAA and verified partial fractions of the training filters (float64)."""
import jax.numpy as jnp
import numpy as np
import pytest

from ntk_info.dynamics import filter_values
from ntk_info.rational import aaa, fit_filter


def _filter(lr, steps, lam, discrete):
    return lambda mu: np.asarray(filter_values(jnp.asarray(mu + lam), lr=lr, steps=steps, discrete=discrete))


def test_aaa_recovers_a_rational_function():
    poles = np.array([-0.3 + 0.2j, -0.3 - 0.2j, 1.5])
    residues = np.array([0.7 - 0.1j, 0.7 + 0.1j, -2.0])
    f = lambda x: 0.25 + np.sum(residues / (x[:, None] - poles), axis=1)
    x = np.linspace(0.0, 1.0, 400)
    zs, fs, w = aaa(x, f(x))
    assert len(zs) == 4  # type (3, 3): four support points
    y = np.linspace(0.0, 1.0, 1001)
    y = y[~np.isin(y, zs.real)]  # the barycentric form is 0/0 at its support points
    num = (w * fs / (y[:, None] - zs)).sum(1)
    den = (w / (y[:, None] - zs)).sum(1)
    np.testing.assert_allclose(num / den, f(y), rtol=0, atol=1e-12)


@pytest.mark.parametrize("lr_times_max, steps, lam, discrete", [
    (1.0, 2000, 0.0, False),   # long gradient flow: steep near 0
    (1.0, 2000, 0.0, True),    # the reference GD setting (t = 2000, η = 1/λmax)
    (1.9, 2000, 0.0, True),    # near the stability limit: oscillates at the top of the spectrum
    (1.0, 3, 0.0, False),      # short training: nearly linear
    (0.5, 40, 0.2, True),      # weight decay shifts the spectrum
])
def test_fit_matches_filter_on_a_dense_grid(lr_times_max, steps, lam, discrete):
    mu_max = 7.0
    lr = lr_times_max / (mu_max + lam)
    h = _filter(lr, steps, lam, discrete)
    fit = fit_filter(h, mu_max, resolution=1.0 / (lr * steps * mu_max))
    assert fit is not None
    mu = np.concatenate([np.linspace(0.0, mu_max, 50001), mu_max * np.geomspace(1e-9, 1.0, 2000)])
    err = np.max(np.abs(fit(mu) - h(mu))) / np.max(np.abs(h(mu)))
    assert err < 1e-12, err
    assert np.all(np.abs(fit(mu).imag) < 1e-12 * np.max(np.abs(h(mu))))


def test_no_fit_for_unresolvable_filters():
    """A pseudo-inverse (jump at 0) and η·t·λmax = 1e7 have no verified fit: the caller falls back."""
    assert fit_filter(lambda mu: np.where(mu > 1e-3, 1.0 / np.maximum(mu, 1e-3), 0.0), 1.0) is None
    assert fit_filter(_filter(1.0, 1e7, 0.0, False), 1.0, resolution=1e-7) is None


def test_zero_filter_is_exact():
    fit = fit_filter(lambda mu: np.zeros_like(mu), 3.0)
    assert fit is not None and fit.poles.size == 0 and fit(np.array([0.0, 1.0])).tolist() == [0.0, 0.0]
