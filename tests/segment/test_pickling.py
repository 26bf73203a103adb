"""A SharedArray pickles by reference through ``copyreg`` (registered by ``ndshm._reference``), so
every pickler that consults ``copyreg.dispatch_table`` carries it: pickle itself, multiprocessing's
ForkingPickler, cloudpickle (issue 19: references and pickling out of ``_segment``). Spawned
multiprocessing Pools and Queues: ``test_segment_mp.py`` (``test_pool_map_pickles_slices_by_reference``,
``test_process_pool_executor_and_queue``)."""

from __future__ import annotations

import copyreg
import pickle
import pickletools
from multiprocessing.reduction import ForkingPickler

import numpy as np

import ndshm
from ndshm import _reference, _segment
from optional_deps import require

def _globals(data: bytes) -> list[tuple[str, str]]:
    """The (module, name) pairs a pickle stream loads, in order."""
    out, strings = [], []
    for op, arg, _ in pickletools.genops(data):
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(arg)
        elif op.name == "STACK_GLOBAL":
            out.append((strings[-2], strings[-1]))
        elif op.name in ("GLOBAL", "INST"):
            out.append(tuple(arg.split(" ", 1)))
    return out


def _check_by_reference(data: bytes, view: np.ndarray, loads=pickle.loads) -> None:
    assert len(data) < 600, len(data)
    assert ("ndshm._segment", "rebuild_view") in _globals(data)
    back = loads(data)
    assert type(back) is ndshm.SharedArray
    assert back.shape == view.shape and back.strides == view.strides and back.dtype == view.dtype
    assert back.__array_interface__["data"][0] == view.__array_interface__["data"][0]  # the same memory
    np.testing.assert_array_equal(back, view)


def test_the_pickling_is_copyregs_not_the_class():
    assert copyreg.dispatch_table[ndshm.SharedArray] is _reference.reduce_shared_array
    assert "__reduce_ex__" not in vars(ndshm.SharedArray) and "__reduce__" not in vars(ndshm.SharedArray)
    assert ndshm.Reference.__module__ == "ndshm._reference"


def test_pickle_at_every_protocol_and_a_view_of_a_view(unique_name):
    a = ndshm.create(unique_name, (50, 40), "f4")
    a[...] = np.arange(2000, dtype="f4").reshape(50, 40)
    view = a[5:30][::3, 7:1:-2]  # a view of a view is a SharedArray too
    assert type(view) is ndshm.SharedArray
    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        _check_by_reference(pickle.dumps(view, protocol=protocol), view)


def test_multiprocessings_forking_pickler(unique_name):
    a = ndshm.create(unique_name, (1000,), "i8", fill=7)
    view = a[10:500:7]
    _check_by_reference(bytes(ForkingPickler.dumps(view)), view, ForkingPickler.loads)


def test_cloudpickle(unique_name):
    cloudpickle = require("cloudpickle", "test of Dask's and Ray's pickler")
    a = ndshm.create(unique_name, (64, 8), "u2")
    a[...] = 3
    view = a[::4].T
    _check_by_reference(cloudpickle.dumps(view), view)
    # inside another object, as Dask and Ray pickle task arguments
    box = cloudpickle.loads(cloudpickle.dumps({"x": [view]}))
    assert np.shares_memory(box["x"][0], a)


def test_by_value_keeps_the_protocol(unique_name):
    """A SharedArray whose data is not in a segment (a ufunc's result) pickles as a plain ndarray
    by value: at protocol 5 its data leaves out of band, as NumPy's own pickling does."""
    a = ndshm.create(unique_name, (4, 1000), "f8", fill=1.0)
    b = a[:2] + 1
    assert type(b) is ndshm.SharedArray
    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps(b, protocol=5, buffer_callback=buffers.append)
    assert len(buffers) == 1 and len(data) < 500
    back = pickle.loads(data, buffers=buffers)
    assert type(back) is np.ndarray and back.dtype == np.float64
    np.testing.assert_array_equal(back, b)
    data2 = pickle.dumps(b, protocol=2)
    assert len(data2) > b.nbytes and ("ndshm._segment", "rebuild_view") not in _globals(data2)
    np.testing.assert_array_equal(pickle.loads(data2), b)


class _OldStream:
    """Pickles as the streams of ndshm before this move did: ``ndshm._segment.rebuild_view`` and
    the reference's fields, positionally."""

    def __init__(self, fields: tuple) -> None:
        self.fields = fields

    def __reduce__(self):
        return (_segment.rebuild_view, self.fields)


def test_a_stream_naming_segment_rebuild_view_still_loads(unique_name):
    a = ndshm.create(unique_name, (16,), "i4", fill=5)
    ref = ndshm.reference(a[4:12])
    data = pickle.dumps(_OldStream(tuple(ref)))
    assert _globals(data)[0] == ("ndshm._segment", "rebuild_view")
    back = pickle.loads(data)
    assert type(back) is ndshm.SharedArray and back.tolist() == [5] * 8
    back[0] = -1
    assert a[4] == -1
    # the oldest form: six fields (no readonly, file identity, hand-over or node)
    short = pickle.loads(pickle.dumps(_OldStream(tuple(ref)[:6])))
    assert np.shares_memory(short, a) and short.flags.writeable
