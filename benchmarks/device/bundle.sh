#!/usr/bin/env bash
# Builds .dev/: what a lent device machine needs to run benchmarks/ray_scaling.py there. That
# machine has no network and a bare CPython 3.12, so this carries pystream built for 3.12 and
# Ray with its dependencies (numpy included) as one site-packages tarball, under the 64 MiB the
# device tool carries (Ray's Java jars and dashboard web build are left out). Run here, where
# pip reaches an index:
#     bash benchmarks/device/bundle.sh
# then one device call: command "bash benchmarks/device/run.sh", carry [".dev"] (run.sh says
# what it runs; its output comes back as scaling.txt).
set -euo pipefail
cd "$(dirname "$0")/../.."
py=
for c in ${PYTHON312:-} python3.12 "$(pyenv root 2>/dev/null)"/versions/3.12*/bin/python; do
  if "$c" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then py=$c; break; fi
done
[ -n "$py" ] || { echo "bundle: needs a CPython 3.12 (set PYTHON312=/path/to/python3.12)" >&2; exit 1; }
ray_version=$(python3 -c 'import importlib.metadata as m; print(m.version("ray"))' 2>/dev/null || echo 2.60.0)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rm -rf .dev && mkdir .dev
echo "+ pystream wheel for $("$py" --version)"
"$py" -m pip wheel -q --no-deps -w .dev .
echo "+ ray==$ray_version and its dependencies for $("$py" --version)"
"$py" -m pip install -q --target "$work/site" "ray==$ray_version" numpy
rm -rf "$work/site/ray/jars" "$work/site/ray/dashboard/client/build" "$work/site/bin"
find "$work/site" -name __pycache__ -prune -exec rm -rf {} +
tar -C "$work/site" -cf - . | xz -T0 -6 > .dev/site.tar.xz
du -sh .dev/*
total=$(du -sm .dev | cut -f1)
if [ "$total" -ge 64 ]; then
  echo "bundle: .dev is ${total} MiB, over the 64 MiB the device tool carries" >&2
  exit 1
fi
