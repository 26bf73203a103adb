"""Segment's public attributes have real types for a user's ``mypy --strict`` script (issue 11,
item 6): they were ``property(lambda ...)``, which type checkers see as ``Any``, so nothing a user
wrote with them was checked. The script asserts each type with ``assert_type`` (``Any`` does not
pass it) and is run too, so the types are what the attributes really hold."""

from __future__ import annotations

from test_typing import _check_script, _run, mypy_cache  # noqa: F401  (mypy_cache: the shared fixture)

SEGMENT_SCRIPT = '''
from __future__ import annotations

import sys
from typing import Any, Optional

import numpy as np
from numpy.typing import NDArray
from typing_extensions import assert_type

import ndshm
from ndshm import Segment

seg = Segment.create(sys.argv[1], (4, 2), np.int32)
assert assert_type(seg.name, Optional[str]) == sys.argv[1]
assert assert_type(seg.kind, str) == "named"
assert assert_type(seg.dir, Optional[str]) is not None
assert assert_type(seg.path, Optional[str]) is not None
assert_type(seg.fd, int)
assert assert_type(seg.shape, tuple[int, ...]) == (4, 2)
assert assert_type(seg.strides, tuple[int, ...]) == (8, 4)
assert assert_type(seg.dtype, np.dtype[Any]) == np.int32
assert assert_type(seg.nbytes, int) == 32
assert assert_type(seg.readonly, bool) is False
assert assert_type(seg.creator, bool) is True
assert assert_type(seg.persist, bool) is False
assert assert_type(seg.owner, Optional[str]) == "creator"
assert_type(seg.address, int)
with assert_type(seg.lock, ndshm.Lock):
    pass
assert assert_type(seg.event, ndshm.Event).is_set() is False
assert assert_type(seg.barrier(1), ndshm.Barrier).parties == 1
a = assert_type(seg.asarray(), NDArray[Any])
a[:] = 3
b = assert_type(ndshm.attach(sys.argv[1]), NDArray[Any])
assert int(b.sum()) == 24
assert ndshm.segment_of(b) is seg
buf = assert_type(ndshm.Buffer(64), ndshm.Buffer)
assert assert_type(buf.nbytes, int) == 64 and assert_type(buf.alignment, int) == 64
assert len(assert_type(buf.memoryview(), memoryview)) == 64
seg.close()
assert assert_type(seg.closed, bool) is True
print("ran")
'''


def test_segment_attributes_are_typed(tmp_path, mypy_cache, unique_name):  # noqa: F811
    script = _check_script(tmp_path, mypy_cache, SEGMENT_SCRIPT)
    _run(script, unique_name, tmp_path=tmp_path)
