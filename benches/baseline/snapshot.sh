#!/usr/bin/env bash
# The peer: how many operators snapshot and rotate today, with curl and jq.
# For each server in turn: create a snapshot, poll until it completes, list, and delete
# the oldest beyond KEEP. (Like most such scripts it ignores pagination, 429s and the
# other safety rules the agent keeps; it is the cost baseline, not a model to follow.)
#
# Usage: API=http://127.0.0.1:8089/api/v1 TOKEN=sim-token KEEP=3 POLL=0.01 \
#          benches/baseline/snapshot.sh SERVER_ID...
set -euo pipefail
: "${API:?}" "${TOKEN:?}" "${KEEP:=3}" "${POLL:=20}"
auth=(-H "Authorization: Bearer $TOKEN" -H "Content-Type: application/json")

for server in "$@"; do
  name="backup-$server-$(date -u +%Y%m%dT%H%M%SZ)-$RANDOM"
  id=$(curl -fsS "${auth[@]}" -X POST "$API/snapshots/" \
        -d "{\"server_id\": $server, \"name\": \"$name\"}" | jq -r .id)
  while :; do
    status=$(curl -fsS "${auth[@]}" "$API/snapshots/?server_id=$server" \
      | jq -r --argjson id "$id" '.results[] | select(.id == $id) | .status')
    case "$status" in
      completed) break ;;
      failed|error) echo "snapshot $id on server $server failed" >&2; exit 1 ;;
    esac
    sleep "$POLL"
  done
  curl -fsS "${auth[@]}" "$API/snapshots/?server_id=$server" \
    | jq -r --argjson keep "$KEEP" '.results | sort_by(.created_at) | reverse | .[$keep:] | .[].id' \
    | while read -r old; do
        curl -fsS "${auth[@]}" -X DELETE "$API/snapshots/$old/"
      done
done
