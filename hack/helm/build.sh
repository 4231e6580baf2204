#!/usr/bin/env bash
# Builds helm from its Go module, for the chart's tests and .ci/run, and prints
# the folder holding it (stdout's only line; progress goes to stderr). Cached
# under target/helm/<version>-<key>/.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../lib/gobuild.sh
. "$here/../lib/gobuild.sh"

version=$(awk '$1 == "require" && $2 == "helm.sh/helm/v3" { print $3; exit }' "$here/go.mod")
out=$(cache_dir helm "$version" "$here/go.mod" "$here/go.sum" "$here/build.sh")
cd "$here"
# `helm version` reads the version stamped at link time.
gobuild "helm $version" "$out" "-s -w -X helm.sh/helm/v3/internal/version.version=$version" \
	helm=helm.sh/helm/v3/cmd/helm
echo "$out"
