# The two set-up commands of the README:
#   make demo   builds what it needs and opens a chat with the default model (offline)
#   make test   builds what it needs and runs the whole suite (what CI runs)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# PyTorch's CPU build is installed before anything else, so no dependency pulls the multi-GB
# CUDA build. Elsewhere, point TORCH_INDEX_URL at https://download.pytorch.org/whl/cpu.
TORCH ?= torch==2.13.0
TORCH_INDEX_URL ?=
PIP := $(BIN)/python -m pip --quiet --disable-pip-version-check
# The web chat's browser test drives Debian's chromium (Playwright never downloads a browser here).
CHROMIUM ?= /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
APT := DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get -y -q

# One resolved set of versions (`make lock` writes it): the venvs below and the images in deploy/
# install through it, so what the tests run is what users install.
LOCK := constraints.txt
# optimum-onnx 0.1 needs transformers<4.58: `chatbot[optimum]` lives in an environment of its own.
OPTIMUM_LOCK := constraints-optimum.txt
OPTIMUM_VENV ?= .venv-optimum
# onnxruntime-gpu 1.31 is a CUDA 13 build, as deploy/Dockerfile.serve-gpu's base image
ONNXRUNTIME_GPU ?= onnxruntime-gpu==1.31.1

.PHONY: install test lint demo browser postgres optimum install-gpu lock clean

$(BIN)/.installed: pyproject.toml Makefile $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install -c $(LOCK) "$(TORCH)" $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))
	$(PIP) install -c $(LOCK) -e ".[dev]"
	touch $@

install: $(BIN)/.installed

$(OPTIMUM_VENV)/bin/.installed: pyproject.toml Makefile $(OPTIMUM_LOCK)
	$(PYTHON) -m venv $(OPTIMUM_VENV)
	$(OPTIMUM_VENV)/bin/python -m pip --quiet --disable-pip-version-check install -c $(OPTIMUM_LOCK) \
	  "$(TORCH)" $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))
	$(OPTIMUM_VENV)/bin/python -m pip --quiet --disable-pip-version-check install -c $(OPTIMUM_LOCK) -e ".[optimum]"
	touch $@

# optimum's exporter and ORTModelForCausalLM beside transformers 4.57 (README, "optimum")
optimum: $(OPTIMUM_VENV)/bin/.installed

# Rewrites both locks with the newest releases pyproject.toml's ranges admit (README, "Dependencies").
lock:
	rm -rf .lock
	$(PYTHON) -m venv .lock/main
	.lock/main/bin/python -m pip --quiet --disable-pip-version-check install "$(TORCH)" \
	  $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))
	.lock/main/bin/python -m pip --quiet --disable-pip-version-check install -e ".[dev]"
	$(PYTHON) -m venv .lock/optimum
	.lock/optimum/bin/python -m pip --quiet --disable-pip-version-check install "$(TORCH)" \
	  $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))
	.lock/optimum/bin/python -m pip --quiet --disable-pip-version-check install -e ".[optimum]"
	{ echo "# Written by \`make lock\` ($$($(PYTHON) --version), $$(uname -m)): do not edit."; \
	  .lock/main/bin/python -m pip freeze --exclude-editable | sed -e 's/+cpu$$//'; \
	  echo "$(ONNXRUNTIME_GPU)"; } > $(LOCK)
	{ echo "# Written by \`make lock\` ($$($(PYTHON) --version), $$(uname -m)): do not edit."; \
	  .lock/optimum/bin/python -m pip freeze --exclude-editable | sed -e 's/+cpu$$//'; } > $(OPTIMUM_LOCK)
	rm -rf .lock

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy

$(CHROMIUM):
	$(APT) install chromium >/dev/null || ($(APT) update >/dev/null && $(APT) install chromium >/dev/null)

browser: $(CHROMIUM)

# The store's PostgreSQL tests start a server of their own from Debian's binaries.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || \
	  $(APT) install postgresql >/dev/null || ($(APT) update >/dev/null && $(APT) install postgresql >/dev/null)

# The end-to-end test puts Debian's nginx in front of two replicas (deploy/nginx).
NGINX ?= /usr/sbin/nginx
$(NGINX):
	$(APT) install nginx-light >/dev/null || ($(APT) update >/dev/null && $(APT) install nginx-light >/dev/null)

test: lint browser postgres $(NGINX) optimum
	CHATBOT_CHROMIUM=$(CHROMIUM) CHATBOT_BROWSER_TESTS=required CHATBOT_POSTGRES_TESTS=required \
	  CHATBOT_NGINX=$(NGINX) CHATBOT_NGINX_TESTS=required \
	  CHATBOT_OPTIMUM_PYTHON=$(OPTIMUM_VENV)/bin/python CHATBOT_OPTIMUM_TESTS=required $(BIN)/python -m pytest

demo: install
	$(BIN)/chatbot demo

# Serving on an NVIDIA GPU: onnxruntime-gpu replaces onnxruntime (they share a module name).
install-gpu: install
	$(PIP) uninstall -y onnxruntime
	$(PIP) install -c $(LOCK) --force-reinstall --no-deps onnxruntime-gpu

clean:
	rm -rf $(VENV) $(OPTIMUM_VENV) .lock build *.egg-info .pytest_cache .ruff_cache
