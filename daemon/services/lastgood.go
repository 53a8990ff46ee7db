package services

import (
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// LastGood screens each input with CheckService and CheckEndpointSlice and
// remembers the last valid version of every object. An object that fails
// its checks is a broken edit, not a removal: its last valid version stays
// in force (or, if it never had one, nothing of it is applied), so one
// malformed object never takes down the others or its own working state.
// Objects missing from the input are forgotten: deleting is explicit.
// The zero value is ready to use; it is not safe for concurrent use.
type LastGood struct {
	svcs   map[string]*corev1.Service
	slices map[string]*discoveryv1.EndpointSlice
}

// Screen returns the objects to translate (valid ones, and the last valid
// version of invalid ones) and the objects rejected.
func (g *LastGood) Screen(svcs []*corev1.Service, slices []*discoveryv1.EndpointSlice) ([]*corev1.Service, []*discoveryv1.EndpointSlice, []Rejected) {
	var rejected []Rejected
	var okSvcs []*corev1.Service
	g.svcs, okSvcs = screen(g.svcs, svcs, "Service", CheckService, &rejected)
	var okSlices []*discoveryv1.EndpointSlice
	g.slices, okSlices = screen(g.slices, slices, "EndpointSlice", CheckEndpointSlice, &rejected)
	return okSvcs, okSlices, rejected
}

type object interface {
	GetNamespace() string
	GetName() string
}

func screen[T object](last map[string]T, in []T, kind string, check func(T) error, rejected *[]Rejected) (map[string]T, []T) {
	next := make(map[string]T, len(in))
	var out []T
	for _, o := range in {
		key := o.GetNamespace() + "/" + o.GetName()
		err := check(o)
		if err == nil {
			next[key] = o
			out = append(out, o)
			continue
		}
		prev, kept := last[key]
		*rejected = append(*rejected, Rejected{Kind: kind, Namespace: o.GetNamespace(), Name: o.GetName(), Reason: err.Error(), Kept: kept})
		if kept {
			next[key] = prev
			out = append(out, prev)
		}
	}
	return next, out
}
