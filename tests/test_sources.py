"""Cell sources (:mod:`pyrovae.sources`): the CSR row gather, the on-disk BackedSource, the
block-shuffled epoch order, handles across pickling and fork, prefetching."""

from __future__ import annotations

import multiprocessing
import pickle
import sys
import threading

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import pyrovae.sources as sources_module
from pyrovae.data import CountData, NonIntegerCountsWarning
from pyrovae.sources import BackedSource, as_source, gather_rows, load_batches, prefetch

anndata = pytest.importorskip("anndata")
h5py = pytest.importorskip("h5py")


def random_counts(n=137, p=23, density=0.2, seed=0, dtype=np.float32):
    """Integer counts in CSR with some empty rows (and an empty last row)."""
    rng = np.random.default_rng(seed)
    x = sp.random(n, p, density=density, format="csr", random_state=seed, dtype=np.float64)
    x.data = np.ceil(x.data * 20)
    x = x.astype(dtype)
    keep = np.ones(n, dtype=bool)
    keep[rng.choice(n - 1, n // 5, replace=False)] = False
    keep[n - 1] = False
    x = sp.csr_matrix(sp.diags(keep.astype(dtype)) @ x, dtype=dtype)
    x.eliminate_zeros()
    return x


# --------------------------------------------------------------------------------------------
# gather_rows
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("compiled", [True, False])
def test_gather_rows_equals_toarray(dtype, compiled, monkeypatch):
    if not compiled:
        monkeypatch.setattr(sources_module, "_sparsetools", None)
    x = random_counts(dtype=dtype)
    rng = np.random.default_rng(1)
    assert (np.diff(x.indptr) == 0).sum() > 5  # empty rows present
    cases = [
        np.sort(rng.choice(x.shape[0], 40, replace=False)),  # sorted, scattered
        np.arange(10, 50),  # a contiguous run
        rng.choice(x.shape[0], 60, replace=True),  # any order, repeats
        np.flatnonzero(np.diff(x.indptr) == 0),  # only empty rows
        np.array([x.shape[0] - 1]),
        np.array([], dtype=np.int64),
    ]
    buf = np.full((x.shape[0], x.shape[1]), 7, dtype=dtype)  # dirty reusable buffer
    for idx in cases:
        expected = x[idx].toarray()
        got = gather_rows(x, idx, dtype=dtype)
        assert got.dtype == dtype and got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(gather_rows(x, idx, out=buf), expected)
        np.testing.assert_array_equal(buf[: len(idx)], expected)
    dense = x.toarray()
    np.testing.assert_array_equal(gather_rows(dense, cases[2], dtype=dtype), dense[cases[2]])


@pytest.mark.parametrize("compiled", [True, False])
def test_gather_rows_adds_duplicate_entries_like_toarray(compiled, monkeypatch):
    if not compiled:
        monkeypatch.setattr(sources_module, "_sparsetools", None)
    x = sp.csr_matrix(
        (np.array([1.0, 2.0, 5.0, 3.0]), np.array([1, 1, 0, 2]), np.array([0, 2, 2, 4])),
        shape=(3, 3),
    )
    assert not x.has_canonical_format
    np.testing.assert_array_equal(gather_rows(x, [2, 0, 1]), x.toarray()[[2, 0, 1]])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_count_data_batches_are_unchanged(dtype):
    x = random_counts()
    rng = np.random.default_rng(2)
    w = rng.random(x.shape) > 0.1
    s = rng.random(x.shape[0]) + 0.5
    idx = np.sort(rng.choice(x.shape[0], 50, replace=False))
    for data in (CountData(x, w, s), CountData(x), CountData(x.toarray(), w)):
        xt, wt, st = data.batch(idx, dtype)
        dense = x[idx].toarray()
        expected = np.where(w[idx], dense, 0) if data.w is not None else dense
        assert xt.dtype == dtype
        np.testing.assert_array_equal(xt.numpy(), expected)
        if data.w is not None:
            np.testing.assert_array_equal(wt.numpy(), w[idx])
        if data.size_factor is not None:
            np.testing.assert_array_equal(st.numpy(), s[idx].astype(st.numpy().dtype))
        out = torch.full((64, x.shape[1]), -1.0, dtype=dtype)
        np.testing.assert_array_equal(data.batch(idx, dtype, out=out)[0].numpy(), expected)
        full = data.batch(None, dtype)[0].numpy()
        np.testing.assert_array_equal(
            full, np.where(w, x.toarray(), 0) if data.w is not None else x.toarray()
        )


# --------------------------------------------------------------------------------------------
# BackedSource
# --------------------------------------------------------------------------------------------


@pytest.fixture
def counts():
    return random_counts(n=211, p=17, seed=3)


def write(tmp_path, counts, name="d.h5ad", dense=False, layers=None, x_is_counts=True):
    obs_x = counts.toarray() if dense else counts
    if not x_is_counts:
        obs_x = sp.csr_matrix(np.log1p(counts.toarray()))
    a = anndata.AnnData(X=obs_x, layers=layers or {})
    path = tmp_path / name
    a.write_h5ad(path)
    return path


def index_cases(n, rng):
    return [
        np.sort(rng.choice(n, 40, replace=False)),
        np.arange(n),
        rng.permutation(n)[:50],  # unsorted
        np.array([n - 1]),
        None,
    ]


@pytest.mark.parametrize("kind", ["csr", "dense", "layer"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_backed_batches_equal_in_memory_batches(tmp_path, counts, kind, dtype):
    if kind == "layer":
        path = write(tmp_path, counts, layers={"counts": counts}, x_is_counts=False)
    else:
        path = write(tmp_path, counts, dense=kind == "dense")
    rng = np.random.default_rng(4)
    s = rng.random(counts.shape[0]) + 0.5
    backed = BackedSource(path, size_factor=s, block_size=16, mix=2)
    assert backed.layer == ("counts" if kind == "layer" else None)
    assert backed.sparse == (kind != "dense") and backed.shape == counts.shape
    memory = CountData(counts, None, s)
    for idx in index_cases(counts.shape[0], rng):
        bx, bw, bs = backed.batch(idx, dtype)
        mx, _, ms = memory.batch(idx, dtype)
        assert bw is None and bx.dtype == dtype
        torch.testing.assert_close(bx, mx, rtol=0, atol=0)
        torch.testing.assert_close(bs, ms, rtol=0, atol=0)
    np.testing.assert_array_equal(backed.library_size(), counts.sum(axis=1).A1)
    # a subset in any order, as a validation split would take
    idx = rng.permutation(counts.shape[0])[:70]
    sub, msub = backed.subset(idx), memory.subset(idx)
    assert sub.n_cells == 70
    np.testing.assert_array_equal(sub.library_size(), counts[idx].sum(axis=1).A1)
    for j in index_cases(70, rng):
        torch.testing.assert_close(sub.batch(j, dtype)[0], msub.batch(j, dtype)[0])
        torch.testing.assert_close(sub.batch(j, dtype)[2], msub.batch(j, dtype)[2])
    out = torch.full((80, counts.shape[1]), -3.0, dtype=dtype)
    j = np.sort(rng.choice(70, 33, replace=False))
    torch.testing.assert_close(sub.batch(j, dtype, out=out)[0], msub.batch(j, dtype)[0])


def test_backed_reads_named_layer_and_x(tmp_path, counts):
    other = counts.copy()
    other.data = other.data + 1
    path = write(tmp_path, counts, layers={"counts": other, "raw": counts})
    idx = np.arange(5, 30)
    for layer, expected in ((None, other), ("raw", counts), ("X", counts), ("counts", other)):
        src = BackedSource(path, layer=layer)
        np.testing.assert_array_equal(src.batch(idx)[0].numpy(), expected[idx].toarray())
    with pytest.raises(ValueError, match="no layer 'nope'"):
        BackedSource(path, layer="nope")


def test_block_cache_reads_each_block_once_per_epoch(tmp_path, counts):
    src = BackedSource(write(tmp_path, counts), block_size=16, mix=3)
    reads = []
    original = src._block

    def counting(k):
        if k not in src._cache:
            reads.append(k)
        return original(k)

    src._block = counting
    order = src.epoch_order(torch.Generator().manual_seed(0))
    for start in range(0, len(order), 10):
        src.batch(np.sort(order[start : start + 10]))
    assert sorted(reads) == list(range(-(-counts.shape[0] // 16)))


def test_block_shuffled_order(tmp_path, counts):
    n = counts.shape[0]
    src = BackedSource(write(tmp_path, counts), block_size=16, mix=3)
    a = src.epoch_order(torch.Generator().manual_seed(5))
    b = src.epoch_order(torch.Generator().manual_seed(5))
    c = src.epoch_order(torch.Generator().manual_seed(6))
    np.testing.assert_array_equal(np.sort(a), np.arange(n))  # a permutation
    np.testing.assert_array_equal(a, b)  # reproducible from the generator
    assert not np.array_equal(a, c)
    # each run of `mix` blocks occupies consecutive places: cut the order into runs of 3 blocks
    blocks = a // 16
    n_blocks = -(-n // 16)
    runs, start = [], 0
    while start < n:
        members = set(blocks[start : start + 1])
        stop = start
        while stop < n and (blocks[stop] in members or len(members) < 3):
            members.add(blocks[stop])
            stop += 1
        runs.append(members)
        start = stop
    assert sum(len(r) for r in runs) == n_blocks and len(runs) == -(-n_blocks // 3)
    # within a run the cells are shuffled (not in file order)
    assert not np.all(np.diff(a[:48]) > 0)
    # one run covering the whole file: exactly the fit loop's default torch.randperm
    whole = BackedSource(src.path, block_size=64, mix=4, validate=False)
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    np.testing.assert_array_equal(whole.epoch_order(g1), torch.randperm(n, generator=g2).numpy())
    # a subset groups its cells by file block too
    sub = src.subset(np.random.default_rng(0).permutation(n)[:100])
    o = sub.epoch_order(torch.Generator().manual_seed(1))
    np.testing.assert_array_equal(np.sort(o), np.arange(100))


def _child_read(src, idx, conn):
    conn.send(src.batch(idx)[0].numpy())
    conn.close()


def test_handles_survive_pickling_and_fork(tmp_path, counts):
    src = BackedSource(write(tmp_path, counts), block_size=16)
    idx = np.arange(20, 90)
    expected = counts[idx].toarray()
    np.testing.assert_array_equal(src.batch(idx)[0].numpy(), expected)  # parent handle open
    assert src._file is not None
    clone = pickle.loads(pickle.dumps(src))
    assert clone._file is None and not clone._cache
    np.testing.assert_array_equal(clone.batch(idx)[0].numpy(), expected)
    if sys.platform.startswith("win") or "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork start method")
    ctx = multiprocessing.get_context("fork")
    parent_conn, child_conn = ctx.Pipe()
    proc = ctx.Process(target=_child_read, args=(src, idx, child_conn))
    proc.start()
    got = parent_conn.recv() if parent_conn.poll(60) else None
    proc.join(60)
    assert proc.exitcode == 0
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(src.batch(idx)[0].numpy(), expected)  # parent still reads
    # a source that believes it was forked reopens its own handle and drops the inherited one
    src._pid = -1
    src.batch(idx)
    assert src._pid != -1 and src._file is not None


@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize(
    ("value", "message"),
    [(np.nan, "NaN or inf"), (-2.0, "negative counts"), (0.5, "non-integer counts")],
)
def test_streaming_validation_names_the_problem_and_row(tmp_path, counts, dense, value, message):
    bad = counts.toarray()
    bad[180, 3] = value  # far beyond the first chunk of the pass
    path = write(tmp_path, sp.csr_matrix(bad), dense=dense)
    with pytest.raises(ValueError, match=message) as err:
        BackedSource(path, chunk_entries=64)
    assert "row 180" in str(err.value) and str(path) in str(err.value)


def test_noninteger_counts_can_be_allowed_and_bad_encodings_are_refused(tmp_path, counts):
    x = counts.toarray()
    x[7, 2] = 0.25
    path = write(tmp_path, sp.csr_matrix(x))
    with pytest.warns(NonIntegerCountsWarning):
        src = BackedSource(path, allow_noninteger=True)
    assert src.library_size()[7] == pytest.approx(x[7].sum())
    csc_path = tmp_path / "csc.h5ad"
    anndata.AnnData(X=sp.csc_matrix(counts)).write_h5ad(csc_path)
    with pytest.raises(ValueError, match="CSC"):
        BackedSource(csc_path)
    with pytest.raises(ValueError, match="does not exist"):
        BackedSource(tmp_path / "missing.h5ad")
    broken = tmp_path / "broken.h5ad"
    write(tmp_path, counts, name="broken.h5ad")
    with h5py.File(broken, "r+") as f:
        f["X/indices"][0] = 999
    with pytest.raises(ValueError, match="column indices out of range"):
        BackedSource(broken)
    with pytest.raises(TypeError, match="would load the whole matrix"):
        np.asarray(src)


def test_as_source_dispatch(tmp_path, counts):
    with_empty_rows = write(tmp_path, counts, name="empty_rows.h5ad")
    empty_rows = counts.sum(axis=1).A1 == 0
    counts = sp.csr_matrix(counts.toarray() + (np.arange(counts.shape[1]) == 0))
    path = write(tmp_path, counts, layers={"counts": counts})
    assert isinstance(as_source(path), BackedSource)
    assert isinstance(as_source(str(path)), BackedSource)
    memory = as_source(path, backed=False)
    assert isinstance(memory, CountData) and sp.issparse(memory.x)
    backed_adata = anndata.read_h5ad(path, backed="r")
    try:
        src = as_source(backed_adata)
        assert isinstance(src, BackedSource)
        np.testing.assert_allclose(src.library_size(), counts.sum(axis=1).A1)
    finally:
        backed_adata.file.close()
    in_memory = as_source(anndata.read_h5ad(path))
    assert isinstance(in_memory, CountData)
    np.testing.assert_allclose(in_memory.library_size(), src.library_size())
    assert as_source(src) is src
    with pytest.raises(ValueError, match="backed=True needs a path"):
        as_source(counts, backed=True)
    with pytest.raises(ValueError, match="mask"):
        as_source(path, w=np.ones(counts.shape, bool))
    np.testing.assert_array_equal(as_source(with_empty_rows).library_size() == 0, empty_rows)


# --------------------------------------------------------------------------------------------
# prefetch and load_batches
# --------------------------------------------------------------------------------------------


def test_prefetch_yields_in_order_and_propagates_errors():
    assert list(prefetch(range(50), depth=3)) == list(range(50))
    assert list(prefetch(iter(range(5)), depth=0)) == list(range(5))

    def failing():
        yield 1
        yield 2
        raise KeyError("broken batch")

    it = prefetch(failing(), depth=2)
    assert next(it) == 1 and next(it) == 2
    with pytest.raises(KeyError, match="broken batch"):
        next(it)
    with pytest.raises(StopIteration):
        next(it)
    with pytest.raises(ValueError, match="depth"):
        prefetch([], depth=-1)


def test_prefetch_stops_its_thread_when_the_consumer_stops():
    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    with prefetch(endless(), depth=2) as it:
        assert [next(it) for _ in range(5)] == list(range(5))
        thread = it._thread
    assert not thread.is_alive()
    assert len(produced) <= 5 + 3
    assert threading.current_thread() is threading.main_thread()


@pytest.mark.parametrize("backed", [False, True])
def test_load_batches_equal_direct_batches(tmp_path, counts, backed):
    s = np.random.default_rng(8).random(counts.shape[0]) + 0.5
    source = (
        BackedSource(write(tmp_path, counts), size_factor=s)
        if backed
        else CountData(counts, None, s)
    )
    order = np.random.default_rng(9).permutation(counts.shape[0])
    batches = [np.sort(order[i : i + 20]) for i in range(0, len(order), 20)]
    seen = 0
    for (x, w, sf), idx in zip(load_batches(source, batches, depth=2), batches, strict=True):
        ex, _, es = source.batch(idx)
        torch.testing.assert_close(x, ex, rtol=0, atol=0)  # checked before the ring wraps
        torch.testing.assert_close(sf, es, rtol=0, atol=0)
        assert w is None
        seen += 1
    assert seen == len(batches)
    plain = list(load_batches(source, batches, depth=0, reuse_buffers=False))
    for (x, _, _), idx in zip(plain, batches, strict=True):
        np.testing.assert_array_equal(x.numpy(), counts[idx].toarray())


def test_count_data_and_backed_source_share_library_size_and_with_size_factor(tmp_path, counts):
    backed = BackedSource(write(tmp_path, counts))
    memory = CountData(counts)
    np.testing.assert_array_equal(memory.library_size(), backed.library_size())
    s = np.linspace(0.5, 2.0, counts.shape[0])
    for src in (memory, backed):
        with_s = src.with_size_factor(s)
        np.testing.assert_array_equal(
            with_s.batch(np.arange(3))[2].numpy(), s[:3].astype(np.float32)
        )
        assert src.batch(np.arange(3))[2] is None  # the original is unchanged
    with pytest.raises(ValueError, match="shape"):
        backed.with_size_factor(np.ones(3))
