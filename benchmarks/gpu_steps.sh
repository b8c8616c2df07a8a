# Sourced by the gpu_*.sh scripts: $OUT checked and made, the repository root as the working
# directory, and `step SECONDS COMMAND...`: run a command with a time limit, log it to $OUT/log.txt,
# never stop the script.
set -u -o pipefail
OUT=${OUT:?set OUT to a folder for the results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
cd "$(dirname "${BASH_SOURCE[0]}")/.."
LOG="$OUT/log.txt"
step() {
  local limit=$1; shift
  echo "=== $(date -u +%T) [limit ${limit}s] $*" | tee -a "$LOG"
  timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
  echo "=== rc ${PIPESTATUS[0]}" | tee -a "$LOG"
}
