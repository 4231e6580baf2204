#!/usr/bin/env bash
# Builds the test control plane (etcd, kube-apiserver, kube-controller-manager,
# kubectl) from Kubernetes' own Go modules and prints the folder holding them.
#
# KUBEBUILDER_ASSETS naming a folder that already has the four binaries skips
# the build. Otherwise they are cached under target/controlplane/<version>/,
# keyed by this folder's go.mod and go.sum, so a warm run only checks a hash.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
bins=(etcd kube-apiserver kube-controller-manager kubectl)

have_all() {
	local dir=$1 b
	for b in "${bins[@]}"; do [ -x "$dir/$b" ] || return 1; done
}

if [ -n "${KUBEBUILDER_ASSETS:-}" ]; then
	if have_all "$KUBEBUILDER_ASSETS"; then
		echo "$KUBEBUILDER_ASSETS"
		exit 0
	fi
	echo "KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS lacks one of: ${bins[*]}" >&2
	exit 1
fi

command -v go >/dev/null || {
	echo "go is not installed: install Go 1.24 or newer (Debian: apt-get install golang-go) to build the test control plane" >&2
	exit 1
}

version=$(awk '$1 == "k8s.io/kubernetes" { print $2; exit }' "$here/go.mod")
key=$(cat "$here/go.mod" "$here/go.sum" "$here/etcd/main.go" "$here/build.sh" | sha256sum | cut -c1-12)
out="${CARGO_TARGET_DIR:-$root/target}/controlplane/$version-$key"

if have_all "$out"; then
	echo "$out"
	exit 0
fi

mkdir -p "$out.tmp"
cd "$here"
echo "building the control plane $version into $out (first run: several minutes)" >&2
go build -trimpath -o "$out.tmp/etcd" ./etcd
# Kubernetes stamps its version at link time (hack/lib/version.sh); without
# it the binaries report v0.0.0-master and `kubectl version` fails to parse it.
minor=${version#v1.}
minor=${minor%%.*}
ldflags=""
for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
	ldflags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
done
go build -trimpath -ldflags "$ldflags" -o "$out.tmp/" \
	k8s.io/kubernetes/cmd/kube-apiserver \
	k8s.io/kubernetes/cmd/kube-controller-manager \
	k8s.io/kubernetes/cmd/kubectl
rm -rf "$out"
mv "$out.tmp" "$out"
echo "$out"
