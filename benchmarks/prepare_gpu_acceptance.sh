#!/bin/bash
# Prepare a one-shot GPU acceptance run (benchmarks/gpu_acceptance.sh) on the development
# machine, where package registries can be reached.  Only the repository travels to the
# lent GPU machine, and nothing can be downloaded there, so this puts into two ignored
# folders of the tree:
#
#   .whl/          the wheels the GPU image lacks, for CPython 3.12 on manylinux x86-64:
#                  megatron-core 0.19.2 (megatron.core + megatron.training), liger-kernel,
#                  and every dependency of theirs that is not in the image's package list
#                  (read from the device notes' KINDS.md, DEVICE_KINDS_MD to override);
#   .megatron-lm/  Megatron-LM's entry files (pretrain_gpt.py, gpt_builders.py,
#                  model_provider.py, ...) of the core_v0.19.0 tag, from the shared folder
#                  beside the checkout (MEGATRON_LM_ENTRY_DIR to override).
#
#   bash benchmarks/prepare_gpu_acceptance.sh
#
# Then carry both folders with the run:  carry [".whl", ".megatron-lm"].
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WHL="$HERE/.whl"
MLM="$HERE/.megatron-lm"
PYTHON=${PYTHON:-python3}
KINDS=${DEVICE_KINDS_MD:-/work/.library/device/KINDS.md}
# The packages gpu_acceptance.sh needs beyond the image (one version each).
WANT=(megatron-core==0.19.2 liger-kernel==0.8.5)

find_entry_dir() {
    if [ -n "${MEGATRON_LM_ENTRY_DIR:-}" ]; then echo "$MEGATRON_LM_ENTRY_DIR"; return; fi
    # ../shared beside the checkout, or beside a folder above it (worktrees).
    local d="$HERE"
    while [ "$d" != "/" ]; do
        if [ -f "$d/../shared/megatron-lm/core_v0.19.0/pretrain_gpt.py" ]; then
            (cd "$d/../shared/megatron-lm/core_v0.19.0" && pwd); return
        fi
        d=$(dirname "$d")
    done
    return 1
}

ENTRY=$(find_entry_dir) || { echo "prepare: no shared/megatron-lm/core_v0.19.0 beside the checkout; set MEGATRON_LM_ENTRY_DIR" >&2; exit 1; }
for f in pretrain_gpt.py gpt_builders.py model_provider.py; do
    [ -f "$ENTRY/$f" ] || { echo "prepare: $ENTRY has no $f" >&2; exit 1; }
done
[ -f "$KINDS" ] || { echo "prepare: device notes $KINDS not found (set DEVICE_KINDS_MD): cannot tell what the image lacks" >&2; exit 1; }

rm -rf "$MLM" && mkdir -p "$MLM" && cp "$ENTRY"/*.py "$MLM"/ && { cp "$ENTRY"/LICENSE "$MLM"/ 2>/dev/null || true; }
echo "entry files: $ENTRY -> .megatron-lm/ ($(ls "$MLM" | tr '\n' ' '))"

mkdir -p "$WHL" && rm -f "$WHL"/*.whl
"$PYTHON" - "$WHL" "$KINDS" "${WANT[@]}" <<'PY'
"""Download the wanted wheels and, transitively, each dependency the image lacks."""
import re
import subprocess
import sys
import zipfile
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

whl, kinds, want = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
text = kinds.read_text()
m = re.search(r"## Python packages already there.*?Packages: (.*?)\.\s*$", text, re.S | re.M)
if not m:
    sys.exit(f"prepare: no 'Packages: ...' list under 'Python packages already there' in {kinds}")
image = {canonicalize_name(p) for p in m.group(1).replace("\n", " ").split(", ")}
env = dict(default_environment(), python_version="3.12", python_full_version="3.12.3",
           sys_platform="linux", platform_system="Linux", platform_machine="x86_64",
           implementation_name="cpython", platform_python_implementation="CPython")
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64"]


def download(spec: str) -> Path:
    before = set(whl.glob("*.whl"))
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
           "--python-version", "3.12", "--implementation", "cp", "-d", str(whl), spec]
    for p in PLATFORMS:
        cmd += ["--platform", p]
    subprocess.run(cmd, check=True)
    new = set(whl.glob("*.whl")) - before
    if len(new) != 1:
        sys.exit(f"prepare: pip download {spec} gave {sorted(map(str, new)) or 'no new wheel'}")
    return new.pop()


def requirements(path: Path):
    with zipfile.ZipFile(path) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        for line in z.read(meta).decode().splitlines():
            if line.startswith("Requires-Dist:"):
                req = Requirement(line.split(":", 1)[1].strip())
                if req.marker is None or req.marker.evaluate(dict(env, extra="")):
                    yield req


queue, seen = list(want), set()
while queue:
    spec = queue.pop(0)
    name = canonicalize_name(Requirement(spec).name)
    if name in seen:
        continue
    seen.add(name)
    path = download(spec)
    print(f"  {path.name}")
    for req in requirements(path):
        dep = canonicalize_name(req.name)
        if dep in image:
            print(f"    needs {req} (in the image)")
        elif dep not in seen:
            print(f"    needs {req}: not in the image, downloading")
            queue.append(str(req).split(";")[0])
PY
echo "wheels in .whl/ ($(du -sh "$WHL" | cut -f1)):"
ls "$WHL"
du -sh "$MLM" | sed 's/^/entry files: /'
cat <<'EOF'
Next, with a device lent (one call, about 8 minutes of device time):
  run(command="bash benchmarks/gpu_acceptance.sh \"$OUT\"", carry=[".whl", ".megatron-lm"], timeout_s=600)
EOF
