package config

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/warpnet/warpnet/bpf/pinset"
)

func TestXDPSetting(t *testing.T) {
	cases := map[string]XDP{
		``:                           {},
		`,"xdp":false`:               {},
		`,"xdp":true`:                {Enabled: true, Redirect: true, AntiSpoof: true},
		`,"xdp":{}`:                  {Enabled: true, Redirect: true, AntiSpoof: true},
		`,"xdp":{"redirect":false}`:  {Enabled: true, AntiSpoof: true},
		`,"xdp":{"antiSpoof":false}`: {Enabled: true, Redirect: true},
		`,"xdp":{"redirect":false,"antiSpoof":false}`: {Enabled: true},
	}
	for in, want := range cases {
		n, err := Load([]byte(`{"cniVersion":"1.1.0","name":"n","type":"warp-veth","ipam":{"type":"warp-ipam"}` + in + `}`))
		if err != nil {
			t.Fatalf("%s: %v", in, err)
		}
		if *n.XDP != want {
			t.Errorf("%s: got %+v, want %+v", in, *n.XDP, want)
		}
		if n.MTU != DefaultMTU || n.BPFFSRoot != pinset.DefaultRoot {
			t.Errorf("%s: defaults %d %s", in, n.MTU, n.BPFFSRoot)
		}
	}
}

func TestTCSetting(t *testing.T) {
	cases := map[string]TC{
		``:                                            {},
		`,"redirect":"none"`:                          {},
		`,"redirect":"tc"`:                            {Redirect: true, AntiSpoof: true},
		`,"redirect":"tc","antiSpoof":false`:          {Redirect: true},
		`,"redirect":"none","antiSpoof":true`:         {AntiSpoof: true},
		`,"antiSpoof":true`:                           {AntiSpoof: true},
		`,"antiSpoof":false`:                          {},
		`,"xdp":true,"redirect":"none"`:               {},
		`,"xdp":{"redirect":false},"redirect":"none"`: {},
	}
	for in, want := range cases {
		n, err := Load([]byte(`{"cniVersion":"1.1.0","name":"n","type":"warp-veth","ipam":{"type":"warp-ipam"}` + in + `}`))
		if err != nil {
			t.Fatalf("%s: %v", in, err)
		}
		if n.TC != want || n.TC.Enabled() != (want.Redirect || want.AntiSpoof) {
			t.Errorf("%s: got %+v, want %+v", in, n.TC, want)
		}
	}
}

// With "redirect": "tc", the cluster's pod CIDRs come from the node's facts
// (none while nothing is published); without it, they are not read.
func TestClusterPodCIDRsFromNodeFacts(t *testing.T) {
	facts := filepath.Join(t.TempDir(), "node.json")
	conf := func(extra string) []byte {
		return []byte(`{"cniVersion":"1.1.0","name":"n","type":"warp-veth","ipam":{"type":"warp-ipam"},"mtu":1500,"nodeFacts":"` + facts + `"` + extra + `}`)
	}
	if n, err := Load(conf(`,"redirect":"tc"`)); err != nil || n.ClusterPodCIDRs != nil {
		t.Fatalf("nothing published: %+v, %v", n, err)
	}
	os.WriteFile(facts, []byte(`{"node":"n1","podCIDRs":["10.244.1.0/24"],"mtu":1450,"clusterPodCIDRs":["10.244.0.0/16","fd00:10:244::/56"]}`), 0o644)
	n, err := Load(conf(`,"redirect":"tc"`))
	if err != nil || len(n.ClusterPodCIDRs) != 2 || n.ClusterPodCIDRs[1].String() != "fd00:10:244::/56" || n.MTU != 1500 {
		t.Fatalf("published: %+v, %v", n, err)
	}
	if n, err := Load(conf(``)); err != nil || n.ClusterPodCIDRs != nil {
		t.Fatalf("without tc: %+v, %v", n, err)
	}
	os.WriteFile(facts, []byte(`{"mtu":`), 0o644)
	var te *types.Error
	if _, err := Load(conf(`,"redirect":"tc"`)); !errors.As(err, &te) || te.Code != types.ErrIOFailure || !strings.Contains(te.Msg, "nodeFacts") {
		t.Errorf("unreadable facts: %v", err)
	}
}

func TestInvalid(t *testing.T) {
	cases := []struct {
		in    string
		code  uint
		field string
	}{
		{`"ipam":{"type":"x"},"mtu":"1500"`, types.ErrDecodingFailure, "mtu"},
		{`"ipam":{"type":"x"},"mtu":67`, types.ErrInvalidNetworkConfig, "mtu"},
		{`"ipam":{"type":"x"},"mtu":70000`, types.ErrInvalidNetworkConfig, "mtu"},
		{`"ipam":{}`, types.ErrInvalidNetworkConfig, "ipam"},
		{`"ipam":{"type":"x"},"xdp":"on"`, types.ErrDecodingFailure, "xdp"},
		{`"ipam":{"type":"x"},"xdp":{"redirect":"yes"}`, types.ErrDecodingFailure, "xdp"},
		{`"ipam":{"type":"x"},"bpffsRoot":7`, types.ErrDecodingFailure, "bpffsRoot"},
		{`"ipam":{"type":"x"},"redirect":"xdp"`, types.ErrInvalidNetworkConfig, "redirect"},
		{`"ipam":{"type":"x"},"redirect":true`, types.ErrDecodingFailure, "redirect"},
		{`"ipam":{"type":"x"},"antiSpoof":"on"`, types.ErrDecodingFailure, "antiSpoof"},
		{`"ipam":{"type":"x"},"redirect":"tc","xdp":true`, types.ErrInvalidNetworkConfig, "redirect"},
		{`"ipam":{"type":"x"},"antiSpoof":false,"xdp":{}`, types.ErrInvalidNetworkConfig, "antiSpoof"},
	}
	for _, tc := range cases {
		_, err := Load([]byte(`{"cniVersion":"1.1.0","name":"n",` + tc.in + `}`))
		var te *types.Error
		if !errors.As(err, &te) || te.Code != tc.code || !strings.Contains(te.Msg, tc.field) {
			t.Errorf("%s: got %v, want code %d naming %s", tc.in, err, tc.code, tc.field)
		}
	}
}

// DEL reads only the IPAM type and bpffsRoot: keys it does not need may be
// broken, the ones it needs may not.
func TestLoadDelToleratesTheRest(t *testing.T) {
	for _, rest := range []string{`,"mtu":"abc"`, `,"xdp":"yes"`, `,"xdp":{"redirect":7}`, `,"mtu":20`, `,"prevResult":"junk"`,
		`,"redirect":"warp"`, `,"antiSpoof":1`, `,"nodeFacts":"relative"`} {
		n, err := LoadDel([]byte(`{"cniVersion":"1.1.0","name":"n","ipam":{"type":"warp-ipam","ranges":"garbage"},"bpffsRoot":"/sys/fs/bpf/x"` + rest + `}`))
		if err != nil {
			t.Fatalf("%s: %v", rest, err)
		}
		if n.IPAM.Type != "warp-ipam" || n.BPFFSRoot != "/sys/fs/bpf/x" || n.Name != "n" {
			t.Errorf("%s: got %+v", rest, n)
		}
	}
	if n, err := LoadDel([]byte(`{"ipam":{"type":"x"}}`)); err != nil || n.BPFFSRoot != pinset.DefaultRoot {
		t.Errorf("defaults: %+v %v", n, err)
	}
	for in, field := range map[string]string{
		`{"ipam":{}}`:                         "ipam",
		`{"ipam":"warp-ipam"}`:                "ipam",
		`{"ipam":{"type":"x"},"bpffsRoot":7}`: "bpffsRoot",
		`{"ipam":`:                            "JSON",
	} {
		_, err := LoadDel([]byte(in))
		var te *types.Error
		if !errors.As(err, &te) || !strings.Contains(te.Msg, field) {
			t.Errorf("%s: got %v, want an error naming %s", in, err, field)
		}
	}
}

// An omitted mtu is the node's published MTU, else 1500.
func TestMTUFromNodeFacts(t *testing.T) {
	facts := filepath.Join(t.TempDir(), "node.json")
	conf := []byte(`{"cniVersion":"1.1.0","name":"n","type":"warp-veth","ipam":{"type":"warp-ipam"},"nodeFacts":"` + facts + `"}`)
	if n, err := Load(conf); err != nil || n.MTU != DefaultMTU {
		t.Fatalf("nothing published: %v, %v", n, err)
	}
	os.WriteFile(facts, []byte(`{"node":"n1","podCIDRs":["10.244.1.0/24"],"mtu":1450}`), 0o644)
	if n, err := Load(conf); err != nil || n.MTU != 1450 {
		t.Fatalf("published 1450: %v, %v", n, err)
	}
	explicit := []byte(`{"cniVersion":"1.1.0","name":"n","type":"warp-veth","ipam":{"type":"warp-ipam"},"mtu":9000,"nodeFacts":"` + facts + `"}`)
	if n, err := Load(explicit); err != nil || n.MTU != 9000 {
		t.Fatalf("explicit mtu: %v, %v", n, err)
	}
}

// The shipped conflist's warp-veth entry loads, with the tc datapath, and
// takes MTU and the cluster's pod CIDRs from the node's facts.
func TestShippedConflist(t *testing.T) {
	data, err := os.ReadFile("../../../cni-conf/10-warpnet.conflist")
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		CNIVersion string           `json:"cniVersion"`
		Name       string           `json:"name"`
		Plugins    []map[string]any `json:"plugins"`
	}
	if err := json.Unmarshal(data, &list); err != nil {
		t.Fatal(err)
	}
	facts := filepath.Join(t.TempDir(), "node.json")
	os.WriteFile(facts, []byte(`{"node":"n1","podCIDRs":["10.244.1.0/24"],"mtu":1450,"clusterPodCIDRs":["10.244.0.0/16"]}`), 0o644)
	for _, p := range list.Plugins {
		if p["type"] != "warp-veth" {
			continue
		}
		p["cniVersion"], p["name"], p["nodeFacts"] = list.CNIVersion, list.Name, facts
		b, _ := json.Marshal(p)
		n, err := Load(b)
		if err != nil {
			t.Fatal(err)
		}
		if n.TC != (TC{Redirect: true, AntiSpoof: true}) || n.XDP.Enabled || n.MTU != 1450 || len(n.ClusterPodCIDRs) != 1 {
			t.Errorf("shipped warp-veth configuration: %+v, TC %+v", n, n.TC)
		}
		return
	}
	t.Fatal("no warp-veth in cni-conf/10-warpnet.conflist")
}
