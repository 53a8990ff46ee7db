//go:build tools

// Package whereabouts pins the whereabouts CNI plugin for the benchmark's
// build (hack/build-whereabouts.sh).
package whereabouts

import _ "github.com/k8snetworkplumbingwg/whereabouts/cmd"
