#!/usr/bin/env bash
# One set-up for a fresh machine, used by the README's test command and by .ci/run:
# system tools the DICOM and serving tests talk to (dcmtk, dicom3tools, Orthanc; libopenjp2 for
# reduced JPEG 2000 decoding), then a virtual
# environment with every extra the test suite exercises.
#   VENV=.venv (default) bash scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}

need_apt=()
command -v storescu >/dev/null 2>&1 || need_apt+=(dcmtk)
command -v dciodvfy >/dev/null 2>&1 || need_apt+=(dicom3tools)
command -v Orthanc >/dev/null 2>&1 || need_apt+=(orthanc)
# OpenJPEG's C library: glymur (dicom-codecs extra) decodes JPEG 2000 at reduced resolution with it
ldconfig -p 2>/dev/null | grep -q "libopenjp2\.so" || need_apt+=(libopenjp2-7)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "setup: not root or no apt-get: install ${need_apt[*]} yourself; tests needing them skip" >&2
  fi
fi

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# torch is pinned to the CPU wheel through constraints.txt (unpinned it pulls a ~5 GB CUDA build).
"$VENV/bin/python" -m pip install -q -c constraints.txt -e ".[train,dev,dicom-codecs,node,triton,signing]"
# The tritonserver binary (with the Python backend) the serving tests start. nvidia-pytriton pins
# numpy<2 while the DICOM codecs need numpy 2; only its server binary is used, so no deps.
"$VENV/bin/python" -m pip install -q --no-deps "nvidia-pytriton>=0.5"
