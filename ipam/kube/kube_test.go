package kube

import (
	"net/netip"
	"testing"
)

func TestAllocationNames(t *testing.T) {
	for _, s := range []string{"10.0.0.5", "fd00::5", "fd00:1:2:3:4:5:6:7"} {
		ip := netip.MustParseAddr(s)
		n := AllocationName(ip)
		back, ok := AddrFromName(n)
		if !ok || back != ip {
			t.Errorf("%s -> %q -> %v", s, n, back)
		}
	}
	if n := AllocationName(netip.MustParseAddr("fd00::5")); n != "fd00-0000-0000-0000-0000-0000-0000-0005" {
		t.Errorf("IPv6 name %q", n)
	}
}

func TestPoolSize(t *testing.T) {
	for _, tc := range []struct {
		spec IPPoolSpec
		want string
	}{
		{IPPoolSpec{Subnet: "10.0.0.0/24"}, "253"}, // .1 gateway, .0 and .255
		{IPPoolSpec{Subnet: "10.0.0.0/24", Gateway: "10.0.0.254", Exclude: []string{"10.0.0.10", "10.0.0.8/29", "10.0.0.254"}}, "245"},
		{IPPoolSpec{Subnet: "10.0.0.0/24", Ranges: []PoolRange{{Start: "10.0.0.10", End: "10.0.0.19"}, {Start: "10.0.0.100", End: "10.0.0.109"}}, Exclude: []string{"10.0.0.15"}}, "19"},
		{IPPoolSpec{Subnet: "fd00::/120"}, "254"}, // ::0 network and ::1 gateway; IPv6 has no broadcast
		{IPPoolSpec{Subnet: "fd00::/64"}, "18446744073709551614"},
	} {
		p := &IPPool{ObjectMeta: ObjectMeta{Name: "p"}, Spec: tc.spec}
		got, err := p.Size()
		if err != nil || got.String() != tc.want {
			t.Errorf("%+v: size %v (%v), want %s", tc.spec, got, err, tc.want)
		}
	}
}

func TestPodRequest(t *testing.T) {
	pools, ips, err := PodRequest(map[string]string{AnnotationPool: `{"net1": "a", "net2": ["b", "c"]}`, AnnotationIP: "10.0.0.5, fd00::5"}, "net2")
	if err != nil || len(pools) != 2 || pools[1] != "c" || len(ips) != 2 {
		t.Errorf("pools %v ips %v err %v", pools, ips, err)
	}
	pools, _, err = PodRequest(map[string]string{AnnotationPool: `{"net1": "a"}`}, "eth0")
	if err != nil || pools != nil {
		t.Errorf("an interface the annotation does not name: %v %v", pools, err)
	}
	if _, _, err := PodRequest(map[string]string{AnnotationPool: `{"net1": 5}`}, "net1"); err == nil {
		t.Error("a number as pool name accepted")
	}
}

func TestLabelSelector(t *testing.T) {
	s := &LabelSelector{MatchLabels: map[string]string{"a": "1"}, MatchExpressions: []LabelSelectorRequirement{
		{Key: "b", Operator: "In", Values: []string{"x", "y"}}, {Key: "c", Operator: "DoesNotExist"}}}
	for _, tc := range []struct {
		l    map[string]string
		want bool
	}{
		{map[string]string{"a": "1", "b": "x"}, true},
		{map[string]string{"a": "1", "b": "z"}, false},
		{map[string]string{"a": "1", "b": "y", "c": ""}, false},
		{map[string]string{"b": "x"}, false},
	} {
		if got, err := s.Matches(tc.l); got != tc.want || err != nil {
			t.Errorf("%v: %v %v", tc.l, got, err)
		}
	}
	if LabelValue("node-1.example") != "node-1.example" || len(LabelValue(string(make([]byte, 70)))) > 63 {
		t.Error("LabelValue")
	}
}
