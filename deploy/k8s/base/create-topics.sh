#!/usr/bin/env bash
# Create every lithowatch topic (idempotent): the same partition count for all, the library
# topic compacted (it is the reference set: the last record per key is the truth).
#
# Environment:
#   KAFKA_BOOTSTRAP        broker to talk to (default kafka:9092)
#   LITHOWATCH_PARTITIONS  partitions per topic; bounds how many replicas of a stage do work (default 4)
#   REPLICATION_FACTOR     copies of each partition (default 1: a single broker)
#   MAX_MESSAGE_BYTES      largest record batch a topic accepts (default 10 MiB, above the
#                          services' 8 MiB producer limit)
#   DLQ_RETENTION_MS       how long dead letters are kept (default 14 days)
#   KAFKA_COMMAND_CONFIG   client properties file (SASL/TLS) for kafka-topics.sh, used when it exists
#   KAFKA_BIN              folder holding kafka-topics.sh (default /opt/kafka/bin)
#   WAIT_SECONDS           how long to wait for the broker to answer (default 120)
set -euo pipefail

bootstrap="${KAFKA_BOOTSTRAP:-kafka:9092}"
partitions="${LITHOWATCH_PARTITIONS:-4}"
replication="${REPLICATION_FACTOR:-1}"
max_message_bytes="${MAX_MESSAGE_BYTES:-10485760}"
dlq_retention_ms="${DLQ_RETENTION_MS:-1209600000}"
kafka_topics="${KAFKA_BIN:-/opt/kafka/bin}/kafka-topics.sh"
kafka_configs="${KAFKA_BIN:-/opt/kafka/bin}/kafka-configs.sh"
wait_seconds="${WAIT_SECONDS:-120}"

case "$partitions" in
  '' | *[!0-9]* | 0) echo "create-topics: LITHOWATCH_PARTITIONS must be a positive integer, got '$partitions'" >&2; exit 2 ;;
esac

common=(--bootstrap-server "$bootstrap")
if [[ -n "${KAFKA_COMMAND_CONFIG:-}" ]]; then
  if [[ -f "$KAFKA_COMMAND_CONFIG" ]]; then
    common+=(--command-config "$KAFKA_COMMAND_CONFIG")
  else
    echo "create-topics: no client config at $KAFKA_COMMAND_CONFIG; connecting without one (PLAINTEXT)" >&2
  fi
fi

deadline=$((SECONDS + wait_seconds))
until "$kafka_topics" "${common[@]}" --list >/dev/null 2>&1; do
  if ((SECONDS >= deadline)); then
    echo "create-topics: broker $bootstrap did not answer within ${wait_seconds}s" >&2
    exit 1
  fi
  sleep 2
done

create() {
  local topic="$1"
  shift
  "$kafka_topics" "${common[@]}" --create --if-not-exists --topic "$topic" \
    --partitions "$partitions" --replication-factor "$replication" \
    --config "max.message.bytes=$max_message_bytes" "$@"
  echo "create-topics: $topic ready ($partitions partitions${*:+, $*})"
}

create lithowatch.results.v1
create lithowatch.unique.v1
create lithowatch.duplicates.v1
create lithowatch.aligned.v1
create lithowatch.embedded.v1
create lithowatch.scores.v1
create lithowatch.alerts.v1
create lithowatch.explanations.v1
create lithowatch.library.v1 --config cleanup.policy=compact
create lithowatch.dlq.v1 --config "retention.ms=$dlq_retention_ms"
create lithowatch.verdicts.v1  # one verdict per result (key result_id): the latest per key is the truth
create lithowatch.feedback.v1 --config retention.ms=-1  # reviewers' decisions (key entry_id): kept for calibration

# --if-not-exists leaves an existing topic's settings alone: make sure the library is compacted
# even when it was created earlier by someone else (for instance by broker auto-creation).
"$kafka_configs" "${common[@]}" --entity-type topics --entity-name lithowatch.library.v1 \
  --alter --add-config cleanup.policy=compact

"$kafka_topics" "${common[@]}" --describe --topic 'lithowatch\..*' | grep -E '^Topic:' || true
