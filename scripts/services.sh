#!/usr/bin/env bash
# Installs the Debian packages the platform and its tests use, and starts the test PostgreSQL.
# Idempotent: installs only what is missing and leaves a running server alone.
set -euo pipefail

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

packages=(postgresql libpostgresql-jdbc-java libopenblas0 chromium sqlite3)
missing=()
for pkg in "${packages[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The test database: role churn/churn, databases churn_test (JDBC source) and churn_meta
# (Dagster and MLflow on PostgreSQL), on 127.0.0.1:5432.
version=$(ls /usr/lib/postgresql | sort -n | tail -1)
if ! pg_lsclusters -h | awk '{print $4}' | grep -q online; then
  $SUDO pg_ctlcluster "$version" main start
fi
for _ in $(seq 1 30); do
  pg_isready -q -h 127.0.0.1 -p 5432 && break
  sleep 1
done
psql_as_postgres() {
  if [ -z "$SUDO" ]; then runuser -u postgres -- psql -v ON_ERROR_STOP=1 -qtAc "$1"
  else sudo -u postgres psql -v ON_ERROR_STOP=1 -qtAc "$1"; fi
}
if [ "$(psql_as_postgres "SELECT 1 FROM pg_roles WHERE rolname='churn'")" != 1 ]; then
  psql_as_postgres "CREATE ROLE churn LOGIN PASSWORD 'churn' CREATEDB"
fi
for db in churn_test churn_meta; do
  if [ "$(psql_as_postgres "SELECT 1 FROM pg_database WHERE datname='$db'")" != 1 ]; then
    psql_as_postgres "CREATE DATABASE $db OWNER churn"
  fi
done
echo "PostgreSQL $version ready on 127.0.0.1:5432 (user churn, databases churn_test, churn_meta)"
