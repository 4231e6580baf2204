#!/usr/bin/env bash
# Builds the GitOps engines' health checks from their own Go modules, for
# tests/gitops_health.rs, and prints the folder holding them (stdout's only
# line; progress goes to stderr). Cached under target/gitops-health/<key>/.
#
#   argocd-health  Argo CD's resource health override (argo-cd's util/lua
#                  through gitops-engine's health.GetResourceHealth)
#   flux-health    Flux's healthCheckExprs (fluxcd/pkg/runtime's CEL status
#                  reader, as kustomize-controller builds it)
#
# Two modules, as each engine pins Kubernetes' libraries at its own version
# (argo-cd v3.2.12 replaces k8s.io/* with v0.34.0; kustomize-controller
# v1.9.4 requires v0.36.2): one build would run neither engine's code.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../lib/gobuild.sh
. "$here/../lib/gobuild.sh"

# version MODULE GO_MOD: the version GO_MOD requires of MODULE.
version() {
	awk -v m="$1" '{ for (i = 1; i < NF; i++) if ($i == m) { print $(i + 1); exit } }' "$2"
}
argocd=$(version github.com/argoproj/argo-cd/v3 "$here/argocd/go.mod")
flux=$(version github.com/fluxcd/pkg/runtime "$here/flux/go.mod")
out=$(cache_dir gitops-health "argocd-$argocd-flux-runtime-$flux" "$here/build.sh" \
	"$here"/argocd/go.mod "$here"/argocd/go.sum "$here"/argocd/*.go \
	"$here"/flux/go.mod "$here"/flux/go.sum "$here"/flux/*.go)
(cd "$here/argocd" && gobuild "Argo CD $argocd health check" "$out" "-s -w" argocd-health=.)
(cd "$here/flux" && gobuild "Flux (fluxcd/pkg/runtime $flux) health check" "$out" "-s -w" flux-health=.)
echo "$out"
