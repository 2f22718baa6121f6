//go:build tools

// Package tools pins the helm command this module builds (the chart's lint and template tests).
package tools

import _ "helm.sh/helm/v4/cmd/helm"
