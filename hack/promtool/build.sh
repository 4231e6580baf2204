#!/usr/bin/env bash
# Builds promtool from Prometheus' Go module, to test the chart's alert rules,
# and prints the folder holding it (stdout's only line; progress goes to
# stderr). Cached under target/promtool/<version>-<key>/.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../lib/gobuild.sh
. "$here/../lib/gobuild.sh"

version=$(awk '$1 == "require" && $2 == "github.com/prometheus/prometheus" { print $3; exit }' "$here/go.mod")
out=$(cache_dir promtool "$version" "$here/go.mod" "$here/go.sum" "$here/build.sh")
cd "$here"
gobuild "promtool $version" "$out" "-s -w" promtool=github.com/prometheus/prometheus/cmd/promtool
echo "$out"
