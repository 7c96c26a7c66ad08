import numpy as np

from detector.features.windows import table_windows
from detector.state.windows import EntityState


def _stream(n: int = 300, f: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    keys = rng.choice(["a", "b", "c", "d"], n)
    x = rng.normal(size=(n, f)).astype(np.float32)
    t = np.arange(n, dtype=np.float64) * 1000
    return keys, x, t


def test_batches_give_the_same_windows_as_the_whole_table() -> None:
    keys, x, t = _stream()
    want_x, want_rows = table_windows(x, keys, 5)
    st = EntityState(window=5, n_features=3)
    got_x, got_rows, warm = [], [], 0
    for lo in range(0, len(x), 37):  # uneven batches
        hi = min(len(x), lo + 37)
        w = st.windows(
            ["t"] * (hi - lo), np.zeros(hi - lo, int), list(keys[lo:hi]), t[lo:hi], x[lo:hi]
        )
        got_x.append(w.windows.take(slice(None)))
        got_rows.append(w.rows + lo)
        warm += w.warmup
    np.testing.assert_array_equal(np.concatenate(got_rows), want_rows)
    np.testing.assert_array_equal(np.concatenate(got_x), want_x)
    assert warm == 4 * 4  # W-1 per entity


def test_late_samples_are_dropped_and_counted() -> None:
    st = EntityState(window=2, n_features=1)
    x = np.arange(5, dtype=np.float32)[:, None]
    w = st.windows(["t"] * 5, np.zeros(5, int), ["k"] * 5, np.array([1.0, 2, 1.5, 3, 3]), x)
    assert w.late == 1 and w.warmup == 1
    np.testing.assert_array_equal(w.rows, [1, 3, 4])
    np.testing.assert_array_equal(w.windows.take(slice(None))[:, :, 0], [[0, 1], [1, 3], [3, 4]])
    w2 = st.windows(["t"], np.zeros(1, int), ["k"], np.array([2.0]), x[:1])
    assert w2.late == 1 and len(w2.rows) == 0


def test_bounded_entities_and_partition_revocation() -> None:
    st = EntityState(window=3, n_features=1, max_entities=3)
    x = np.ones((5, 1), np.float32)
    st.windows(["t"] * 5, np.array([0, 0, 1, 1, 1]), list("abcde"), np.zeros(5), x)
    assert len(st) == 3 and st.evicted == 2
    assert st.drop_partitions([("t", 1)]) == 3 and len(st) == 0
