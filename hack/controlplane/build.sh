#!/usr/bin/env bash
# Builds the test control plane from Kubernetes' own Go modules and prints the
# folder holding it (stdout's only line; progress goes to stderr).
#
#   build.sh [BINARY...]   etcd, kube-apiserver, kube-controller-manager, kubectl
#                          (default: all four; the demo needs only the servers)
#
# KUBEBUILDER_ASSETS naming a folder that already has the binaries skips the
# build. Otherwise they are cached under target/controlplane/<version>-<key>/,
# so a warm run only checks a hash.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../lib/gobuild.sh
. "$here/../lib/gobuild.sh"

all=(etcd kube-apiserver kube-controller-manager kubectl)
bins=("$@")
[ ${#bins[@]} -gt 0 ] || bins=("${all[@]}")

if [ -n "${KUBEBUILDER_ASSETS:-}" ]; then
	for b in "${bins[@]}"; do
		[ -x "$KUBEBUILDER_ASSETS/$b" ] || {
			echo "KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS lacks $b" >&2
			exit 1
		}
	done
	echo "$KUBEBUILDER_ASSETS"
	exit 0
fi

specs=()
for b in "${bins[@]}"; do
	case $b in
	etcd) specs+=("etcd=./etcd") ;;
	kube-apiserver | kube-controller-manager | kubectl) specs+=("$b=k8s.io/kubernetes/cmd/$b") ;;
	*)
		echo "build.sh: unknown binary $b (one of: ${all[*]})" >&2
		exit 2
		;;
	esac
done

version=$(awk '$1 == "k8s.io/kubernetes" { print $2; exit }' "$here/go.mod")
out=$(cache_dir controlplane "$version" "$here/go.mod" "$here/go.sum" "$here/etcd/main.go" "$here/build.sh")

# Kubernetes stamps its version at link time (hack/lib/version.sh); without
# it the binaries report v0.0.0-master and `kubectl version` fails to parse it.
minor=${version#v1.}
minor=${minor%%.*}
ldflags="-s -w"
for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
	ldflags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
done

cd "$here"
gobuild "the control plane $version" "$out" "$ldflags" "${specs[@]}"
echo "$out"
