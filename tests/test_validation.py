"""Bad input gets a clear ValueError/TypeError naming the argument and the problem (issue 6).

Every check runs at the public boundary (``VAE.fit`` and the evaluation methods), for dense
numpy, torch and scipy.sparse input alike. Where an input is valid but unusual (NaN at missing
entries, non-integer counts with ``allow_noninteger=True``, other formats of the same numbers)
the tests check that the answer is the same as for the plain input — never silently different.
"""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import pyrovae
from pyrovae.data import NonIntegerCountsWarning

N, P = 20, 6
TINY = dict(latent_dim=2, hidden=(8,))
FIT = dict(max_epochs=2, seed=0)

FORMATS = {
    "numpy": lambda a: a,
    "torch": lambda a: torch.as_tensor(a),
    "csr": sp.csr_matrix,
    "csc": sp.csc_matrix,
}
METHODS = ["denoise", "predict", "latent", "log_likelihood"]


def _call(model, method, x, **kwargs):
    if method == "log_likelihood":
        kwargs.setdefault("n_samples", 4)
    if method == "denoise":
        kwargs.setdefault("n_samples", 4)
    return getattr(model, method)(x, **kwargs)


@pytest.fixture(scope="module")
def x():
    rng = np.random.default_rng(0)
    return rng.poisson(3.0, size=(N, P)).astype(np.float64)


@pytest.fixture(scope="module")
def fitted(x):
    return pyrovae.VAE(**TINY).fit(x, **FIT)


def _vae(**kwargs):
    return pyrovae.VAE(**{**TINY, **kwargs})


def _params(est):
    return [p.detach().clone() for p in (*est.model_.parameters(), *est.guide_.parameters())]


def _assert_same_fit(a, b):
    np.testing.assert_array_equal(a.trace_, b.trace_)
    for pa, pb in zip(_params(a), _params(b), strict=True):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)


# -- the counts -------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_negative_counts(x, fmt):
    bad = x.copy()
    bad[3, 2] = -1
    with pytest.raises(ValueError, match=r"^x has negative counts \(min -1"):
        _vae().fit(FORMATS[fmt](bad), **FIT)


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("method", METHODS)
def test_negative_counts_in_evaluation(fitted, x, fmt, method):
    bad = x.copy()
    bad[0, 0] = -2
    with pytest.raises(ValueError, match="x has negative counts"):
        _call(fitted, method, FORMATS[fmt](bad))


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_noninteger_counts_are_an_error_by_default(x, fmt):
    with pytest.raises(ValueError, match="x has non-integer counts; pass allow_noninteger=True"):
        _vae().fit(FORMATS[fmt](x + 0.25), **FIT)


@pytest.mark.parametrize("fmt", ["numpy", "csr"])
def test_noninteger_counts_allowed_with_warning(x, fmt):
    corrected = FORMATS[fmt](x * 0.9)
    with pytest.warns(NonIntegerCountsWarning, match="x has non-integer counts"):
        est = _vae(prior="zinb").fit(corrected, allow_noninteger=True, **FIT)
    assert np.all(np.isfinite(est.trace_)) and len(est.trace_) == FIT["max_epochs"]
    # the fitted model evaluates the same kind of data (warning again), with finite results
    for method in METHODS:
        with pytest.warns(NonIntegerCountsWarning):
            out = _call(est, method, corrected)
        assert np.all(np.isfinite(out)), method
    # a model fitted on integer counts still refuses them
    est_int = _vae().fit(x, **FIT)
    with pytest.raises(ValueError, match="non-integer"):
        est_int.denoise(x * 0.9)


def test_allow_noninteger_on_integer_counts_is_silent_and_identical(x):
    a = _vae().fit(x, allow_noninteger=True, **FIT)  # no warning (filterwarnings = error)
    b = _vae().fit(x, **FIT)
    _assert_same_fit(a, b)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_nan_or_inf_in_observed_counts(x, fmt, value):
    bad = x.copy()
    bad[5, 1] = value
    with pytest.raises(ValueError, match="x contain NaN or inf; mark missing entries with w = 0"):
        _vae().fit(FORMATS[fmt](bad), **FIT)


@pytest.mark.parametrize("method", METHODS)
def test_nan_in_evaluation(fitted, x, method):
    bad = x.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        _call(fitted, method, bad)


def _mask_with_holes():
    w = np.ones((N, P), dtype=bool)
    w[[0, 3, 3, 7, 19], [0, 1, 5, 2, 4]] = False
    return w


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_nan_allowed_where_missing_and_equals_zero_there(x, fmt):
    w = _mask_with_holes()
    with_nan = np.where(w, x, np.nan)
    with_zero = np.where(w, x, 0.0)
    if fmt in ("csr", "csc"):  # NaN must be a stored value of the sparse matrix
        with_nan = FORMATS[fmt](with_nan)
        before = with_nan.copy()
    else:
        with_nan = FORMATS[fmt](with_nan)
    a = _vae(prior="zinb").fit(with_nan, w=w, **FIT)
    b = _vae(prior="zinb").fit(with_zero, w=w, **FIT)
    _assert_same_fit(a, b)
    for method in METHODS:
        np.testing.assert_array_equal(
            _call(a, method, with_nan, w=w), _call(b, method, with_zero, w=w), err_msg=method
        )
    if fmt in ("csr", "csc"):  # the caller's matrix was not modified
        np.testing.assert_array_equal(with_nan.data, before.data)


def test_nan_outside_the_mask_is_still_an_error(x):
    w = _mask_with_holes()
    bad = np.where(w, x, np.nan)
    bad[1, 1] = np.nan  # observed
    with pytest.raises(ValueError, match="observed entries of x contain NaN"):
        _vae().fit(bad, w=w, **FIT)
    with pytest.raises(ValueError, match="observed entries of x contain NaN"):
        _vae().fit(sp.csr_matrix(bad), w=w, **FIT)


@pytest.mark.parametrize("bad", ["string", None, "complex"])
def test_counts_of_the_wrong_type(x, bad):
    value = {"string": np.full((N, P), "1"), None: None, "complex": x.astype(complex)}[bad]
    with pytest.raises(TypeError, match="^x must hold"):
        _vae().fit(value, **FIT)
    if bad == "complex":
        with pytest.raises(TypeError, match="real numbers"):
            _vae().fit(sp.csr_matrix(value), **FIT)


@pytest.mark.parametrize("shape", [(0, P), (N, 0), (0, 0)], ids=["no cells", "no genes", "nothing"])
@pytest.mark.parametrize("fmt", ["numpy", "torch", "csr"])
def test_empty_matrix(shape, fmt):
    with pytest.raises(ValueError, match=r"x is empty: shape"):
        _vae().fit(FORMATS[fmt](np.zeros(shape)), **FIT)


@pytest.mark.parametrize("shape", [(N,), (2, N, P)])
def test_not_a_matrix(shape):
    with pytest.raises(ValueError, match=r"x must be a 2-D matrix"):
        _vae().fit(np.zeros(shape), **FIT)


# -- the mask ---------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(N, P - 1), (P, N), (N,), (N, P, 1)])
def test_mask_of_the_wrong_shape(x, shape):
    with pytest.raises(ValueError, match=r"w must have the shape of x \(20, 6\)"):
        _vae().fit(x, w=np.ones(shape, dtype=bool), **FIT)


@pytest.mark.parametrize("method", METHODS)
def test_mask_of_the_wrong_shape_in_evaluation(fitted, x, method):
    with pytest.raises(ValueError, match="w must have the shape of x"):
        _call(fitted, method, x, w=np.ones((N, P + 1)))


@pytest.mark.parametrize("dtype", [str, object, complex], ids=["str", "object", "complex"])
def test_mask_of_the_wrong_dtype(x, dtype):
    with pytest.raises(TypeError, match="w must be boolean or 0/1 numbers, got dtype"):
        _vae().fit(x, w=_mask_with_holes().astype(dtype), **FIT)


@pytest.mark.parametrize("value", [0.5, 2.0, -1.0, np.nan])
@pytest.mark.parametrize("fmt", ["numpy", "torch", "csr"])
def test_mask_values_other_than_0_1(x, value, fmt):
    w = np.ones((N, P))
    w[2, 3] = value
    with pytest.raises(ValueError, match=r"w must contain only 0/1"):
        _vae().fit(x, w=FORMATS[fmt](w), **FIT)


def test_mask_encodings_agree(x):
    """bool, 0/1 ints, 0./1. floats, a torch tensor and a sparse matrix are the same mask."""
    w = _mask_with_holes()
    ref = _vae().fit(x, w=w, **FIT)
    for enc in (w.astype(np.int8), w.astype(np.float32), torch.as_tensor(w), sp.csr_matrix(w)):
        _assert_same_fit(_vae().fit(x, w=enc, **FIT), ref)


def test_cell_with_every_entry_masked(x):
    w = _mask_with_holes()
    w[4] = False
    with pytest.raises(ValueError, match=r"w masks every entry of cell\(s\) \[4\]"):
        _vae().fit(x, w=w, **FIT)


def test_gene_with_every_entry_masked(x):
    w = _mask_with_holes()
    w[:, 5] = False
    with pytest.raises(ValueError, match=r"w masks every entry of gene\(s\) \[5\]"):
        _vae().fit(x, w=w, **FIT)


# -- shapes at evaluation -----------------------------------------------------------------------
@pytest.mark.parametrize("genes", [P - 1, P + 1])
@pytest.mark.parametrize("fmt", ["numpy", "csr"])
@pytest.mark.parametrize("method", METHODS)
def test_evaluation_on_a_different_number_of_genes(fitted, method, fmt, genes):
    other = FORMATS[fmt](np.ones((3, genes)))
    with pytest.raises(ValueError, match=rf"x has {genes} genes but the model was fitted on {P}"):
        _call(fitted, method, other)


def test_input_dim_must_match_the_data(x):
    with pytest.raises(ValueError, match=r"x has 6 genes but input_dim is 7"):
        _vae(input_dim=7).fit(x, **FIT)


def test_prior_built_for_other_genes(x):
    with pytest.raises(ValueError, match="the prior was built for 4 genes but x has 6"):
        _vae(prior=pyrovae.Gamma(n_genes=4)).fit(x, **FIT)


# -- size factors -----------------------------------------------------------------------------
BAD_SIZE_FACTORS = {
    "zero": (lambda n: np.r_[np.ones(n - 1), 0.0], "size_factor must be positive and finite"),
    "negative": (lambda n: -np.ones(n), "size_factor must be positive and finite"),
    "nan": (lambda n: np.r_[np.nan, np.ones(n - 1)], "size_factor must be positive and finite"),
    "inf": (lambda n: np.r_[np.inf, np.ones(n - 1)], "size_factor must be positive and finite"),
    "short": (lambda n: np.ones(n - 1), r"size_factor must have shape \(20,\), got \(19,\)"),
    "column": (lambda n: np.ones((n, 1)), r"size_factor must have shape \(20,\), got \(20, 1\)"),
    "name": (lambda n: "median", "size_factor must be None, 'library' or an array"),
}


@pytest.mark.parametrize("case", list(BAD_SIZE_FACTORS))
def test_bad_size_factors(x, case):
    make, message = BAD_SIZE_FACTORS[case]
    with pytest.raises(ValueError, match=message):
        _vae().fit(x, size_factor=make(N), **FIT)
    if case != "name":
        with pytest.raises(ValueError, match=message):
            _vae().fit(x, size_factor=torch.as_tensor(make(N)), **FIT)


@pytest.mark.parametrize("method", ["denoise", "predict", "log_likelihood"])
def test_bad_size_factors_in_evaluation(x, method):
    est = _vae().fit(x, size_factor=np.linspace(0.5, 2, N), **FIT)
    with pytest.raises(ValueError, match="size_factor must be positive and finite"):
        _call(est, method, x, size_factor=np.zeros(N))
    with pytest.raises(ValueError, match="fitted with size factors: pass size_factor"):
        _call(est, method, x)


def test_library_size_factor_needs_counts_in_every_cell(x):
    bad = x.copy()
    bad[6] = 0
    with pytest.raises(ValueError, match=r"size_factor='library' needs counts.*cell\(s\) \[6\]"):
        _vae().fit(bad, size_factor="library", **FIT)


# -- settings ---------------------------------------------------------------------------------
@pytest.mark.parametrize("latent_dim", [0, -1, 1.5, 2.0, "2", None, True])
def test_latent_dim_must_be_a_positive_int(x, latent_dim):
    with pytest.raises(ValueError, match=rf"latent_dim must be an int >= 1, got {latent_dim!r}"):
        pyrovae.VAE(latent_dim=latent_dim, hidden=(8,)).fit(x, **FIT)


@pytest.mark.parametrize("hidden", [(0,), (8, -1), (8.0,), (True,)])
def test_hidden_must_be_positive_ints(x, hidden):
    with pytest.raises(ValueError, match="hidden must be positive ints"):
        pyrovae.VAE(latent_dim=2, hidden=hidden).fit(x, **FIT)


def test_unknown_prior_name(x):
    with pytest.raises(ValueError, match=r"unknown prior 'student'; choose one of \["):
        _vae(prior="student").fit(x, **FIT)


def test_prior_of_the_wrong_type(x):
    with pytest.raises(TypeError, match="prior must be a name or a UPrior, got int"):
        _vae(prior=3).fit(x, **FIT)


def test_unknown_objective_name(x):
    with pytest.raises(ValueError, match=r"unknown objective 'vae'; choose one of"):
        _vae().fit(x, objective="vae", **FIT)


def test_unknown_optimizer_name(x):
    with pytest.raises(ValueError, match=r"unknown optimizer 'sgd'; choose one of"):
        _vae().fit(x, optimizer="sgd", **FIT)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(lr=0.0), "lr must be positive"),
        (dict(lr=float("nan")), "lr must be positive"),
        (dict(max_epochs=0), "max_epochs must be None or a positive int"),
        (dict(batch_size=0), "batch_size must be None or a positive int"),
        (dict(n_samples=0), "n_samples must be a positive int"),
        (dict(validation_fraction=1.0), "validation_fraction must be in"),
        (dict(dtype=torch.float16), "dtype must be torch.float32 or torch.float64"),
    ],
)
def test_bad_fit_settings(x, kwargs, message):
    dtype = kwargs.pop("dtype", torch.float32)
    with pytest.raises(ValueError, match=message):
        _vae(dtype=dtype).fit(x, **{**FIT, **kwargs})


@pytest.mark.parametrize("method", ["denoise", "predict", "log_likelihood"])
def test_bad_n_samples_in_evaluation(fitted, x, method):
    with pytest.raises(ValueError, match="n_samples must be a positive int, got 0"):
        getattr(fitted, method)(x, n_samples=0)


# -- order of calls ---------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_evaluation_before_fit(x, method):
    with pytest.raises(pyrovae.NotFittedError, match="not fitted yet; call fit first"):
        _call(_vae(), method, x)


@pytest.mark.parametrize("attr", ["trace", "encoder", "decoder", "prior_"])
def test_fitted_attributes_before_fit(attr):
    with pytest.raises(pyrovae.NotFittedError, match="not fitted yet"):
        getattr(_vae(), attr)


def test_save_before_fit(tmp_path):
    with pytest.raises(pyrovae.NotFittedError, match="not fitted yet"):
        _vae().save(tmp_path / "model.pt")
    assert not (tmp_path / "model.pt").exists()


def test_not_fitted_error_is_also_an_attribute_error():
    """hasattr-style probing (scikit-learn's check_is_fitted) keeps working."""
    assert not hasattr(_vae(), "trace")


# -- formats are interchangeable ----------------------------------------------------------------
def test_every_input_format_gives_the_same_fit(x):
    ref = _vae().fit(x, **FIT)
    for other in (
        x.astype(np.int64),
        x.astype(np.float32),
        torch.as_tensor(x),
        sp.csr_matrix(x),
        sp.coo_matrix(x),
        x.tolist(),
    ):
        _assert_same_fit(_vae().fit(other, **FIT), ref)
    np.testing.assert_array_equal(ref.denoise(sp.csr_matrix(x)), ref.denoise(x))


def test_evaluation_chunks_are_divided_by_the_quadrature_nodes(monkeypatch):
    """A quadrature prior materializes one value per node, particle, cell and gene: denoise and
    the validation loss take proportionally fewer cells per chunk (a 50-particle denoise of a
    few thousand cells with 33 nodes once needed 24 GB)."""
    import pyrovae._chunking as chunking
    from pyrovae import VAE
    from pyrovae import posterior as post
    from pyrovae.priors import Gamma, LogNormal

    assert LogNormal(n_half=16).evaluation_width == 33 and Gamma().evaluation_width == 1
    assert chunking.auto_chunk(1000, 10, width=33) == chunking.ELEMENT_BUDGET // (33 * 10 * 1000)
    x = np.random.default_rng(0).poisson(2.0, size=(60, 20))
    monkeypatch.setattr(chunking, "ELEMENT_BUDGET", 33 * 4 * 20 * 5)  # 5 cells per chunk
    sizes = []
    real = post.evaluate_rows

    def spy(fn, model, guide, source, eps, *args, **kwargs):
        def recording(model, guide, x, w, s, eps):
            sizes.append(x.shape[0])
            return fn(model, guide, x, w, s, eps)

        return real(recording, model, guide, source, eps, *args, **kwargs)

    est = VAE(latent_dim=2, hidden=(8,), prior=LogNormal(n_half=16)).fit(x, max_epochs=2)
    monkeypatch.setattr(post, "evaluate_rows", spy)
    est.denoise(x, n_samples=4)
    assert sizes and max(sizes) == 5
