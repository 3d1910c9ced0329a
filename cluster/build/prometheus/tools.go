//go:build tools

// Prometheus, built from its Go module (the 3.x line publishes as v0.3xx.y); listed here so
// go.mod pins its dependencies.
package tools

import (
	_ "github.com/prometheus/prometheus/cmd/prometheus"
)
