#!/usr/bin/env bash
# make run-full: the full stack (config/full-stack.toml) on a generated
# sample. Generates forms and the cases they touch, loads the primary
# database (known users, cases) into PostgreSQL, publishes the changes to
# Kafka, runs CommCare's two pillows in two processes until caught up with
# a progress bar each, prints what landed where and the firefighting
# page's URL, then keeps the pillows running until Ctrl-C.
# Run again, it publishes the same sample again: the pillows process the
# new changes and every sink ends as before.
set -euo pipefail
cd "$(dirname "$0")/.."

P=${PILLOWTOP:-target/release/pillowtop}
CONFIG=config/full-stack.toml
OUT=data/full-stack
N=${FULL_SUBMISSIONS:-10000}
PG=${PILLOWTOP_STORE_URL:-postgres://postgres@127.0.0.1:5432/pillowtop_test}
ES=${PILLOWTOP_ES_URL:-http://127.0.0.1:19200}
PT=("$P" --config "$CONFIG" --log warn)

"$P" gen --kind related --count "$N" --seed 42 --out "$OUT"
psql -q -v ON_ERROR_STOP=1 "$PG" -f "$OUT/primary.sql" 2>&1 | grep -v NOTICE || true
for topic in case-sql form-sql; do
  "${PT[@]}" publish --topic "$topic" --partitions 4 < "$OUT/$topic.jsonl"
done

# What each pillow has waiting: "NAME NEED" lines.
need() {
  "${PT[@]}" status --json | python3 -c '
import json, sys
for p in json.load(sys.stdin)["pillows"]:
    print(p["pillow"], p["need_processing"])'
}
# One bar per pillow: changes processed of those waiting at the start.
declare -A TOTAL
while read -r name n; do TOTAL[$name]=$n; done <<< "$(need)"

"${PT[@]}" run --process-num 0 > "$OUT/process-0.log" 2>&1 &
P0=$!
PILLOWTOP_ADMIN_ADDRESS=127.0.0.1:9181 "${PT[@]}" run --process-num 1 > "$OUT/process-1.log" 2>&1 &
P1=$!
stop() { kill -TERM "$P0" "$P1" 2>/dev/null || true; wait "$P0" "$P1" 2>/dev/null || true; }
trap 'trap - INT TERM; echo; echo "stopping the pillows"; stop; exit 0' INT TERM

while :; do
  sleep 1
  for pid in "$P0" "$P1"; do
    kill -0 "$pid" 2>/dev/null || { echo "a pillow process stopped; see $OUT/process-*.log" >&2; tail -n 5 "$OUT"/process-*.log >&2; stop; exit 1; }
  done
  NEED=$(need)
  line="" ; waiting=0
  while read -r name need; do
    [[ -z "${TOTAL[$name]:-}" || "$need" -gt "${TOTAL[$name]}" ]] && TOTAL[$name]=$need
    total=${TOTAL[$name]}; done_=$((total - need)); waiting=$((waiting + need))
    width=30; fill=$(( total > 0 ? done_ * width / total : width ))
    bar=$(printf '%*s' "$fill" '' | tr ' ' '#')$(printf '%*s' $((width - fill)) '' | tr ' ' '-')
    line+=$(printf '%-13s [%s] %6d/%-6d  ' "$name" "$bar" "$done_" "$total")
  done <<< "$NEED"
  printf '\r%s' "$line"
  [[ $waiting -eq 0 ]] && break
done
echo; echo

echo "What landed where:"
for index in case-search-20230524 users; do
  count=$(curl -s "$ES/pillowtop-$index/_count" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("count", 0))')
  printf '  index  pillowtop-%-32s %8s documents\n' "$index" "$count"
done
psql -At "$PG" -c "SELECT table_name FROM information_schema.tables WHERE table_schema = 'pillowtop' AND (table_name LIKE 'ucr\_%' OR table_name = 'messaging_phone_numbers') ORDER BY 1" |
  while read -r table; do
    printf '  table  %-42s %8s rows\n' "$table" "$(psql -At "$PG" -c "SELECT count(*) FROM pillowtop.\"$table\"")"
  done
echo
"${PT[@]}" errors list | sed -n '1,4p'
echo
echo "The firefighting page: http://127.0.0.1:9180/  (status: ${PT[*]} status --watch)"
echo "The pillows keep running (logs in $OUT/process-*.log); Ctrl-C stops them."
wait "$P0" "$P1"
