//go:build tools

// KEDA's operator and its metrics API server, which `make cluster` builds; listed here so
// go.mod pins their dependencies.
package tools

import (
	_ "github.com/kedacore/keda/v2/cmd/adapter"
	_ "github.com/kedacore/keda/v2/cmd/operator"
)
