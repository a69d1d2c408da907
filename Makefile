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

.PHONY: install test lint demo browser postgres install-gpu clean

$(BIN)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install "$(TORCH)" $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))
	$(PIP) install -e ".[dev]"
	touch $@

install: $(BIN)/.installed

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

test: lint browser postgres $(NGINX)
	CHATBOT_CHROMIUM=$(CHROMIUM) CHATBOT_BROWSER_TESTS=required CHATBOT_POSTGRES_TESTS=required \
	  CHATBOT_NGINX=$(NGINX) CHATBOT_NGINX_TESTS=required $(BIN)/python -m pytest

demo: install
	$(BIN)/chatbot demo

# Serving on an NVIDIA GPU: onnxruntime-gpu replaces onnxruntime (they share a module name).
install-gpu: install
	$(PIP) uninstall -y onnxruntime
	$(PIP) install --force-reinstall --no-deps "onnxruntime-gpu>=1.20"

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
