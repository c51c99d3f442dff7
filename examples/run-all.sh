#!/usr/bin/env bash
# Every example in turn against a running portal (make run). An example that cannot run here says why and exits 3
# (IPsec without the lab); that is reported, not counted as a failure.
set -uo pipefail
cd "$(dirname "$0")"
failed=0
for script in [0-9][0-9]-*.sh; do
  echo "################ $script"
  bash "$script"
  code=$?
  case $code in
    0) echo "PASS $script" ;;
    3) echo "UNAVAILABLE $script (see above)" ;;
    *) echo "FAIL $script (exit $code)"; failed=1 ;;
  esac
done
exit $failed
