# Two commands a new user needs (see README):  make run   and   make test
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.vdfast-installed
DALI_STAMP := $(VENV)/.vdfast-dali-installed
# pip must never resolve torch on its own: the constraints pin the CPU build (no 5 GB CUDA download)
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install install-dali run test test-fast bench smoke ctest ctest-tsan ctest-asan clean

$(STAMP): requirements.txt constraints.txt setup.py pyproject.toml $(wildcard csrc/*.cpp csrc/*.h csrc/cuda/*.cu)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -U pip
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-build-isolation -e .
	$(PY) -c "import torch, vdfast._C; print('vdfast._C built; torch', torch.__version__)"
	touch $@

install: $(STAMP)

# NVIDIA DALI, the `dali` extra (~200 MB download, ~600 MB installed; pip resolves it under the same
# constraints, so torch stays the CPU build): the tests, the smoke run and the benchmarks use it
# (tests/test_dali.py, the decoder benchmark); `make run` does not. The extra's requirements are read
# from vdfast's installed metadata: `pip install -e '.[dali]'` would build the extension again.
DALI_REQS = $(PY) -c "import importlib.metadata as m; \
	print(*[r.split(';')[0] for r in m.requires('vdfast') if r.endswith('extra == \"dali\"')])"
$(DALI_STAMP): $(STAMP)
	$(PIP) install -q $$($(DALI_REQS))
	$(PY) -c "import nvidia.dali as d; print('DALI', d.__version__)"
	touch $@

install-dali: $(DALI_STAMP)

# the main job: distill the embedded dataset with DM at ipc 1, evaluate, print the table
run: install
	$(VENV)/bin/vdfast distill --data builtin --method dm --ipc 1 --out runs/builtin-dm-ipc1

test: install-dali
	$(PY) -m pytest -q

# the suite without the long end-to-end runs (marked slow): a few minutes, for the edit-test loop
test-fast: install-dali
	$(PY) -m pytest -q -m "not slow"

# the bundled benchmarks at their full sizes (BENCHMARKS.md says which figures came from where)
bench: install-dali
	$(VENV)/bin/vdfast bench

# tiny benchmark runs (CI): every fused op against its reference, one iteration of dm, s2d-dm, mtt,
# s2d-mtt and GVD generation against their reference-style loops, and the decoders
smoke: install-dali
	$(VENV)/bin/vdfast bench --smoke

# C++ unit tests of the CPU kernels (CMakeLists.txt, tests/cpp/): configure, build and ctest in
# build/cmake; ctest-tsan / ctest-asan: the same under ThreadSanitizer / AddressSanitizer+UBSan.
# They need torch in the venv, not the built extension (so editing a kernel does not reinstall).
# The micro-benchmark is build/cmake/bench_kernels (ctest label `bench`, left out here).
CMAKE      ?= cmake
CMAKE_JOBS ?= 2
CMAKE_CONFIGURE = $(CMAKE) -S . -G Ninja -DCMAKE_MAKE_PROGRAM=$(abspath $(VENV)/bin/ninja) \
                  -DPython3_EXECUTABLE=$(abspath $(PY))
define run_ctest
	@$(PY) -c "import torch" 2>/dev/null || $(MAKE) install
	$(CMAKE_CONFIGURE) -B $(1) $(2)
	$(CMAKE) --build $(1) -j $(CMAKE_JOBS)
	cd $(1) && ctest --output-on-failure -LE bench
endef

ctest:
	$(call run_ctest,build/cmake,)

ctest-tsan:
	$(call run_ctest,build/cmake-tsan,-DVDFAST_SANITIZE=thread)

ctest-asan:
	$(call run_ctest,build/cmake-asan,-DVDFAST_SANITIZE=address)

clean:
	rm -rf build *.egg-info vdfast/_C*.so runs
