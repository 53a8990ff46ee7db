package ipamgc

import (
	"testing"

	appsv1 "k8s.io/api/apps/v1"

	"github.com/warpnet/warpnet/ipam/kube"
)

func TestVerdict(t *testing.T) {
	sts := func(replicas, start int32) *appsv1.StatefulSet {
		s := &appsv1.StatefulSet{Spec: appsv1.StatefulSetSpec{Replicas: &replicas}}
		if start > 0 {
			s.Spec.Ordinals = &appsv1.StatefulSetOrdinals{Start: start}
		}
		return s
	}
	alloc := func(pod string, ss *kube.StatefulSetRef) *kube.IPAllocation {
		return &kube.IPAllocation{Spec: kube.IPAllocationSpec{Pod: kube.PodRef{Namespace: "ns", Name: pod}, StatefulSet: ss}}
	}
	for _, tc := range []struct {
		name   string
		a      *kube.IPAllocation
		pods   []string
		set    *appsv1.StatefulSet
		leaked bool
	}{
		{"pod exists", alloc("a", nil), []string{"a"}, nil, false},
		{"pod gone", alloc("a", nil), nil, nil, true},
		{"pinned, in range, pod gone", alloc("db-1", &kube.StatefulSetRef{Name: "db", Ordinal: 1}), nil, sts(2, 0), false},
		{"pinned, StatefulSet and pod gone", alloc("db-1", &kube.StatefulSetRef{Name: "db", Ordinal: 1}), nil, nil, true},
		{"pinned, StatefulSet gone, pod orphaned and running", alloc("db-1", &kube.StatefulSetRef{Name: "db", Ordinal: 1}), []string{"db-1"}, nil, false},
		{"pinned, scaled below, pod gone", alloc("db-1", &kube.StatefulSetRef{Name: "db", Ordinal: 1}), nil, sts(1, 0), true},
		{"pinned, scaled below, pod terminating", alloc("db-1", &kube.StatefulSetRef{Name: "db", Ordinal: 1}), []string{"db-1"}, sts(1, 0), false},
		{"pinned, ordinals start", alloc("db-5", &kube.StatefulSetRef{Name: "db", Ordinal: 5}), nil, sts(2, 4), false},
		{"pinned, below ordinals start", alloc("db-3", &kube.StatefulSetRef{Name: "db", Ordinal: 3}), nil, sts(2, 4), true},
	} {
		pod := func(ns, name string) bool {
			for _, p := range tc.pods {
				if ns == "ns" && p == name {
					return true
				}
			}
			return false
		}
		set := func(ns, name string) (*appsv1.StatefulSet, bool) {
			return tc.set, tc.set != nil && ns == "ns" && name == "db"
		}
		if got, why := Verdict(tc.a, pod, set); got != tc.leaked {
			t.Errorf("%s: leaked=%v (%s), want %v", tc.name, got, why, tc.leaked)
		}
	}
}
