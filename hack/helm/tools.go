//go:build tools

// Package tools pins helm, which build.sh builds for the chart's tests, so
// that `go mod tidy` keeps it in go.mod.
package tools

import _ "helm.sh/helm/v3/cmd/helm"
