#!/usr/bin/env bash
# Install detectron2 into the environment of $PYTHON.
#
# DETECTRON2_SRC set (a pip requirement: a source path, an sdist, or a git URL such as
# git+https://github.com/facebookresearch/detectron2.git): build detectron2 from it, with its C++ ops
# (and CUDA ones where a toolkit is found), against the torch installed there (--no-build-isolation).
#
# Otherwise detectron2 0.6, unless one is importable there already (for example a source build with
# its C++/CUDA extension, which is always preferred).
# Official detectron2 is not on PyPI. The PyPI sdist `pb1-detectron2==0.6` carries upstream v0.6's
# Python sources unchanged but cannot build its C++ extension (csrc is missing), so we build a pure
# Python wheel from it: no ext_modules, and the model-zoo configs packaged by glob.
# ge_detectron.compat supplies what the missing extension and newer numpy/Pillow/setuptools break.
set -euo pipefail
PYTHON=${PYTHON:-python3}
case "$PYTHON" in */*) PYTHON="$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON")" ;; esac

if [ -n "${DETECTRON2_SRC:-}" ]; then
  "$PYTHON" -m pip install --no-build-isolation "$DETECTRON2_SRC"
  "$PYTHON" -c "import detectron2; print('installed detectron2', detectron2.__version__, 'from', '$DETECTRON2_SRC')"
  exit 0
fi

if "$PYTHON" -c "import detectron2" 2>/dev/null; then
  echo "detectron2 already importable: $("$PYTHON" -c 'import detectron2, os; print(detectron2.__version__, os.path.dirname(detectron2.__file__))')"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# `pip download` cannot fetch it: pip rejects the sdist's metadata (a direct-URL extra), so the file is
# taken from the package index's simple page, its sha256 checked against the index's.
"$PYTHON" - "$work" <<'PY'
import hashlib, os, re, subprocess, sys, urllib.parse, urllib.request
index = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.index-url"],
                       capture_output=True, text=True).stdout.strip() or "https://pypi.org/simple"
index = os.environ.get("PIP_INDEX_URL", index).rstrip("/")
page = urllib.request.urlopen(f"{index}/pb1-detectron2/", timeout=60).read().decode()
match = re.search(r'href="([^"#]+pb1[_-]detectron2-0\.6\.tar\.gz)#sha256=([0-9a-f]+)"', page)
if not match:
    sys.exit(f"pb1-detectron2 0.6 sdist not found at {index}/pb1-detectron2/")
url, sha = match.groups()
url = urllib.parse.urljoin(f"{index}/pb1-detectron2/", url)
data = urllib.request.urlopen(url, timeout=300).read()
if hashlib.sha256(data).hexdigest() != sha:
    sys.exit(f"sha256 mismatch for {url}")
open(os.path.join(sys.argv[1], "pb1-detectron2-0.6.tar.gz"), "wb").write(data)
PY
tar -xzf "$work"/pb1*detectron2-0.6.tar.gz -C "$work"
src=$(echo "$work"/pb1*detectron2-0.6)
"$PYTHON" - "$src/setup.py" <<'PY'
import re, sys
path = sys.argv[1]
text = open(path).read()
text, n_ext = re.subn(r"ext_modules=get_extensions\(\),", "ext_modules=[],", text)
text, n_cmd = re.subn(r"\n\s*cmdclass=\{[^}]*\},?", "", text)
text, n_cfg = re.subn(r'"detectron2.model_zoo": get_model_zoo_configs\(\)',
                      '"detectron2.model_zoo": ["configs/*.yaml", "configs/**/*.yaml", "configs/**/*.py"]', text)
if not (n_ext and n_cmd and n_cfg):
    sys.exit(f"unexpected pb1-detectron2 setup.py layout (ext={n_ext} cmdclass={n_cmd} configs={n_cfg})")
open(path, "w").write(text)
PY
( cd "$src" && "$PYTHON" -m pip wheel -q --no-build-isolation --no-deps . -w "$work/dist" )
"$PYTHON" -m pip install -q "$work"/dist/*.whl
"$PYTHON" -c "import detectron2; print('installed detectron2', detectron2.__version__)"
