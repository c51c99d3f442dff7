#!/usr/bin/env bash
# QRNG entropy in several formats, then a quality report (SP 800-22 battery and SP 800-90B min-entropy) run as a
# background job: poll it to the end and print its verdict.
. "$(dirname "$0")/lib.sh"
OUT="${OUT:-$(mktemp -d)}"
REPORT_BYTES="${REPORT_BYTES:-131072}"

step "1 MiB of raw entropy to $OUT/x.bin"
curl -sS --fail-with-body -H "$AUTH" -D "$OUT/headers" "$BASE/api/entropy?bytes=1048576&format=raw" -o "$OUT/x.bin"
echo "$(wc -c < "$OUT/x.bin") bytes; simulated source: $(grep -i '^x-entropy-simulated' "$OUT/headers" | tr -d '\r' | cut -d' ' -f2)"

step "dice, floats and a seed"
echo "dice:  $(json_get "$(api GET '/api/entropy?format=int&min=1&max=6&count=10')" data)"
echo "float: $(json_get "$(api GET '/api/entropy?format=float&count=4')" data)"
echo "seed:  $(json_get "$(api GET '/api/entropy?format=seed&bits=128')" data)"

step "a quality report on $REPORT_BYTES fresh bytes"
report=$(api POST /api/entropy/quality-reports/ "{\"bytes\": $REPORT_BYTES}")
id=$(json_get "$report" id)
echo "report $id queued"
done_yet() {
  report=$(api GET "/api/entropy/quality-reports/$id/")
  state=$(json_get "$report" state)
  echo "  $state $(json_get "$report" progress 2>/dev/null || true)"
  [ "$state" = done ] || [ "$state" = failed ]
}
wait_for "the quality report" done_yet
[ "$state" = done ] || { echo "the report failed: $(json_get "$report" error)" >&2; exit 1; }
python3 -c '
import json, sys
result = json.loads(sys.argv[1])["result"]
verdict = "PASS" if result["passed"] else "FAIL"
print("%s: %d of %d tests passed on %d bits (alpha %s) -> %s" % (
    result["standard"], result["tests_passed"], result["tests_run"], result["bits"], result["alpha"], verdict))
for test in result["tests"]:
    print("  %-28s %s  min p = %.4f" % (test["name"], "pass" if test["passed"] else "FAIL", min(test["p_values"])))
print("SP 800-90B most common value:", json.dumps(result["most_common_value"]))' "$report"
curl -sS --fail -H "$AUTH" "$BASE/api/entropy/quality-reports/$id/plot.svg" -o "$OUT/p-values.svg"
echo "p-value plot: $OUT/p-values.svg"
echo "OK entropy and quality report"
