"""tracekit._arrays: numpy's set operations done by sorting give numpy's own results."""

from __future__ import annotations

import numpy as np
from hypothesis import given, strategies as st
from hypothesis.extra.numpy import arrays

from tracekit._arrays import distinct, sum_by_key

keys = arrays(np.uint64, st.integers(0, 300), elements=st.sampled_from([0, 1, 2, 7, 1 << 40, 2**64 - 1])
              | st.integers(0, 2**64 - 1))


@given(keys)
def test_distinct_is_numpys_unique(a):
    got = distinct(a)
    assert got.dtype == a.dtype and np.array_equal(got, np.unique(a))


@given(keys, st.data())
def test_sum_by_key_is_unique_and_bincount(a, data):
    w = data.draw(arrays(np.int64, len(a), elements=st.integers(0, 1 << 40)))
    k, s = sum_by_key(a, w)
    u, inv = np.unique(a, return_inverse=True)
    assert np.array_equal(k, u)
    assert s.dtype == np.int64 and np.array_equal(s, np.bincount(inv, weights=w, minlength=len(u)).astype(np.int64)
                                                 if len(a) else np.zeros(0, np.int64))
