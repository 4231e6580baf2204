//go:build tools

// Package tools pins promtool, which build.sh builds to test the chart's
// alert rules, so that `go mod tidy` keeps it in go.mod.
package tools

import _ "github.com/prometheus/prometheus/cmd/promtool"
