#!/usr/bin/env bash
# On a lent device machine (see bundle.sh): unpacks .dev/ into a site directory and runs the
# scaling benchmark; its output goes to $OUT/scaling.txt. Arguments replace the default run
# (160M readings, parallelism 1 2 4 8 16, 512k rows per source per round, every source reading
# at least 16 rounds at 16; 2 and 4 rounds ahead, reads through shared-memory segments; first
# the same parallelism as independent local runtimes, the machine's ceiling), after a probe of
# which CPUs share a core (smt_probe.py; where they do, unpinned and one actor per core, --pin,
# each) and one window actor's cost per row at parallelism 8 alone, side by side, and beside
# routing (actor_windowing.py --side-by-side, ~1 minute; SIDE=0 skips it, SIDE=1 runs it before
# a run given its own arguments too). Left out: Ray's
# object store as the transport (run 4: 35% at 8 against 57% through segments), 1M-row rounds
# (51%), and sources in actors of their own (`--sources own`: those go through the object
# store). About 7-8 minutes on 16 vCPUs; parallelism 8 comes before 16.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
py=
for c in ${PYTHON312:-} python3.12 python3; do
  if "$c" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then py=$c; break; fi
done
[ -n "$py" ] || { echo "run: the bundle is for CPython 3.12; none found (set PYTHON312)" >&2; exit 1; }
site=$(mktemp -d)
trap 'rm -rf "$site"' EXIT
# Python's own tarfile and zipfile: the machine may lack xz
"$py" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="data")' .dev/site.tar.xz "$site"
"$py" -m zipfile -e .dev/pystream-*.whl "$site"
export PYTHONPATH=$site
args=("$@")
side=${SIDE:-$([ $# -eq 0 ] && echo 1 || echo 0)}  # by default only before the default run
out=${OUT:-$repo/.dev/out}
mkdir -p "$out"
cd "$site"  # import the unpacked pystream, not the source tree
{ nproc; lscpu 2>/dev/null | grep -E "^(Model name|Thread|Core|Socket|L2|L3)" || true; } | tee "$out/scaling.txt"
# whether CPUs the VM calls separate cores share one (hyper-threads): ~15-30 s on 16 (PROBE=0
# skips it, for a short follow-up run on a machine already probed)
if [ "${PROBE:-1}" != 0 ]; then
  "$py" "$repo/benchmarks/device/smt_probe.py" 2>&1 | tee -a "$out/scaling.txt" || true
fi
if [ ${#args[@]} -eq 0 ]; then
  args=(--rows 160000000 --parallelism 1 2 4 8 16 --ahead 2 4 --independent --transport shared_memory
        --round-rows 524288)
  # Where CPU 0 has a sibling numbered as one of the --pin modes expects, each placement runs
  # unpinned and with one actor per core (pinned as the siblings are numbered).
  sibling=$(sed -n "s/^smt probe: CPUs that share CPU 0's core: \[\([0-9]*\).*/\1/p" "$out/scaling.txt" | head -1)
  n=$(nproc)
  if [ "$sibling" = 1 ]; then
    args+=(--pin none pairs)
  elif [ -n "$sibling" ] && [ "$sibling" = $((n / 2)) ]; then
    args+=(--pin none halves)
  fi
fi
if [ "$side" = 1 ]; then
  "$py" "$repo/benchmarks/actor_windowing.py" --rows 64000000 --parallelism 8 --repeat 2 --side-by-side 2>&1 \
    | tee -a "$out/scaling.txt" || true
fi
"$py" "$repo/benchmarks/ray_scaling.py" "${args[@]}" 2>&1 | grep -v "Token authentication" | tee -a "$out/scaling.txt"
