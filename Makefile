# hybrid-vpn: the two commands of the README, and a few helpers.
#   make lab      bring up the local rehearsal (real strongSwan + kernel data plane, cloud APIs emulated)
#   make test     run every test (unit, root/netns, real consumers, and the lab end-to-end tests, the bgp lab's
#                 module last)
PY := .venv/bin/python
LAB_VERBS := up down status exec break heal prefer maintenance restart lifetimes

.PHONY: setup test test-bgp-lab test-fast lab lint golden bench first-boot $(LAB_VERBS)

setup:
	@scripts/setup-machine

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

# The routing.mode bgp lab's end-to-end tests alone (tests/e2e/test_lab_bgp.py, also part of `make test`): 6 tests,
# 12.2 min in the VM on this machine (lab/README.md, "routing.mode bgp").
test-bgp-lab: setup
	$(PY) -m pytest -m bgp_lab $(PYTEST_ARGS)

# Everything but the lab VM (quick feedback while developing).
test-fast: setup
	$(PY) -m pytest -m "not vm" $(PYTEST_ARGS)

lint: setup
	.venv/bin/ruff check .

# Regenerate the golden files of the templates; review them as a diff.
golden: setup
	UPDATE_GOLDEN=1 $(PY) -m pytest tests/test_render.py -q && git diff --stat tests/golden

# Benchmarks print numbers (root: they build network namespaces).
bench: setup
	$(PY) bench/agent_bench.py
	$(PY) bench/delivery_bench.py
	$(PY) bench/load_bench.py

# The gateway's first boot on a real Debian 12 VM (lab/README.md, "First boot"); the image is built once per machine.
first-boot: setup
	$(PY) -m lab.debian_image build
	$(PY) -m pytest tests/e2e/test_first_boot.py $(PYTEST_ARGS)

# `make lab` = `make lab up`; `make lab down`, `make lab status`, `make lab break tunnel1`, ...; `make lab ROUTING=bgp`
lab: setup
	$(PY) -m lab $(or $(filter-out lab,$(MAKECMDGOALS)),up) $(if $(ROUTING),--routing $(ROUTING))

# Sub-commands of `make lab` are arguments, not targets of their own.
ifneq ($(filter lab,$(MAKECMDGOALS)),)
$(filter-out lab,$(MAKECMDGOALS)):
	@:
endif
