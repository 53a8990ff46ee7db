package config

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

func load(ipam string, extra string, envArgs string) (*Config, error) {
	return Load([]byte(`{"cniVersion":"1.1.0","name":"n","ipam":`+ipam+extra+`}`), envArgs)
}

func TestHostLocalKeysAndDefaults(t *testing.T) {
	dir := t.TempDir()
	rc := filepath.Join(dir, "resolv.conf")
	os.WriteFile(rc, []byte("# comment\nnameserver 10.0.0.53\nsearch a.local b.local\noptions ndots:5\n"), 0o644)
	cfg, err := load(`{"type":"warp-ipam","ranges":[[{"subnet":"10.1.0.0/16","rangeStart":"10.1.0.10","rangeEnd":"10.1.0.20","gateway":"10.1.0.254"}],[{"subnet":"fd00::/64"}]],
		"routes":[{"dst":"0.0.0.0/0"}],"dataDir":"`+dir+`","resolvConf":"`+rc+`","dns":{"search":["override.local"]}}`, "", "")
	if err != nil {
		t.Fatal(err)
	}
	r := cfg.Ranges[0][0]
	if r.Start.String() != "10.1.0.10" || r.End.String() != "10.1.0.20" || r.Gateway.String() != "10.1.0.254" {
		t.Errorf("range = %+v", r)
	}
	r6 := cfg.Ranges[1][0]
	if r6.Start.String() != "fd00::1" || r6.End.String() != "fd00::ffff:ffff:ffff:ffff" || r6.Gateway.String() != "fd00::1" {
		t.Errorf("v6 defaults = %+v", r6)
	}
	if cfg.DataDir != dir || len(cfg.Routes) != 1 || !cfg.DetectConflicts || cfg.ProbeTimeout != DefaultProbeTimeout {
		t.Errorf("cfg = %+v", cfg)
	}
	if cfg.DNS.Nameservers[0] != "10.0.0.53" || cfg.DNS.Search[0] != "override.local" || cfg.DNS.Options[0] != "ndots:5" {
		t.Errorf("dns = %+v", cfg.DNS)
	}
}

func TestLegacySingleRangeAndV4Defaults(t *testing.T) {
	cfg, err := load(`{"subnet":"192.168.7.0/24"}`, "", "")
	if err != nil {
		t.Fatal(err)
	}
	r := cfg.Ranges[0][0]
	if r.Start.String() != "192.168.7.1" || r.End.String() != "192.168.7.254" || cfg.DataDir != DefaultDataDir {
		t.Errorf("range = %+v dataDir %s", r, cfg.DataDir)
	}
}

func TestRequestedAddresses(t *testing.T) {
	const ipam = `{"ranges":[[{"subnet":"10.1.0.0/24"}],[{"subnet":"fd00::/64"}]]}`
	cfg, err := load(ipam, `,"runtimeConfig":{"ips":["10.1.0.7/24"]},"args":{"cni":{"ips":["fd00::7"]}}`, "")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Requested[0].String() != "10.1.0.7" || cfg.Requested[1].String() != "fd00::7" {
		t.Errorf("requested = %v", cfg.Requested)
	}
	cfg, err = load(ipam, "", "K8S_POD_NAME=p;IP=10.1.0.9")
	if err != nil || cfg.Requested[0].String() != "10.1.0.9" {
		t.Errorf("CNI_ARGS: %v %v", cfg, err)
	}
}

// The ipRanges capability prepends range sets, as host-local does.
func TestIPRangesCapability(t *testing.T) {
	cfg, err := load(`{"ranges":[[{"subnet":"10.1.0.0/24"}]]}`, `,"runtimeConfig":{"ipRanges":[[{"subnet":"10.2.0.0/24"}]]}`, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Ranges) != 2 || cfg.Ranges[0][0].Subnet.String() != "10.2.0.0/24" {
		t.Fatalf("ranges = %v", cfg.Ranges)
	}
}

func TestInvalidConfigNamesTheField(t *testing.T) {
	tests := []struct {
		name, ipam, extra, args string
		code                    uint
		field                   string
	}{
		{"no ranges", `{}`, "", "", types.ErrInvalidNetworkConfig, "ipam.ranges"},
		{"bad subnet", `{"ranges":[[{"subnet":"10.0.0.300/24"}]]}`, "", "", types.ErrInvalidNetworkConfig, "ipam.ranges[0][0].subnet"},
		{"host bits", `{"ranges":[[{"subnet":"10.0.0.5/24"}]]}`, "", "", types.ErrInvalidNetworkConfig, "ipam.ranges[0][0].subnet"},
		{"too small", `{"ranges":[[{"subnet":"10.0.0.0/31"}]]}`, "", "", types.ErrInvalidNetworkConfig, "ipam.ranges[0][0].subnet"},
		{"start outside", `{"ranges":[[{"subnet":"10.0.0.0/24","rangeStart":"10.0.1.1"}]]}`, "", "", types.ErrInvalidNetworkConfig, "ipam.ranges[0][0].rangeStart"},
		{"end before start", `{"ranges":[[{"subnet":"10.0.0.0/24","rangeStart":"10.0.0.9","rangeEnd":"10.0.0.3"}]]}`, "", "", types.ErrInvalidNetworkConfig, "ipam.ranges[0][0].rangeEnd"},
		{"overlap", `{"ranges":[[{"subnet":"10.0.0.0/24"}],[{"subnet":"10.0.0.0/25"}]]}`, "", "", types.ErrInvalidNetworkConfig, "ipam.ranges"},
		{"mixed family", `{"ranges":[[{"subnet":"10.0.0.0/24"},{"subnet":"fd00::/64"}]]}`, "", "", types.ErrInvalidNetworkConfig, "ipam.ranges[0][1].subnet"},
		{"bad exclude", `{"ranges":[[{"subnet":"10.0.0.0/24"}]],"exclude":["nope"]}`, "", "", types.ErrInvalidNetworkConfig, "ipam.exclude[0]"},
		{"bad probeTimeout", `{"ranges":[[{"subnet":"10.0.0.0/24"}]],"probeTimeout":"forever"}`, "", "", types.ErrInvalidNetworkConfig, "ipam.probeTimeout"},
		{"wrong type", `{"ranges":[[{"subnet":"10.0.0.0/24"}]],"detectConflicts":"yes"}`, "", "", types.ErrDecodingFailure, "detectConflicts"},
		{"requested outside", `{"ranges":[[{"subnet":"10.0.0.0/24"}]]}`, `,"runtimeConfig":{"ips":["10.9.0.1"]}`, "", types.ErrInvalidNetworkConfig, "runtimeConfig.ips[0]"},
		{"requested excluded", `{"ranges":[[{"subnet":"10.0.0.0/24"}]],"exclude":["10.0.0.0/28"]}`, "", "IP=10.0.0.4", types.ErrInvalidNetworkConfig, "CNI_ARGS IP"},
		{"requested gateway", `{"ranges":[[{"subnet":"10.0.0.0/24"}]]}`, `,"args":{"cni":{"ips":["10.0.0.1"]}}`, "", types.ErrInvalidNetworkConfig, "args.cni.ips[0]"},
		{"two in one set", `{"ranges":[[{"subnet":"10.0.0.0/24"}]]}`, `,"args":{"cni":{"ips":["10.0.0.3","10.0.0.4"]}}`, "", types.ErrInvalidNetworkConfig, "args.cni.ips[1]"},
		{"malformed CNI_ARGS", `{"ranges":[[{"subnet":"10.0.0.0/24"}]]}`, "", "IP", types.ErrInvalidEnvironmentVariables, "CNI_ARGS"},
		{"unknown CNI_ARGS key", `{"ranges":[[{"subnet":"10.0.0.0/24"}]]}`, "", "COLOUR=red", types.ErrInvalidEnvironmentVariables, "COLOUR"},
		{"CNI_ARGS IP not an address", `{"ranges":[[{"subnet":"10.0.0.0/24"}]]}`, "", "IgnoreUnknown=1;IP=ten", types.ErrInvalidEnvironmentVariables, "IP=ten"},
		{"relative dataDir", `{"ranges":[[{"subnet":"10.0.0.0/24"}]],"dataDir":"state/ipam"}`, "", "", types.ErrInvalidNetworkConfig, "ipam.dataDir"},
		{"every IPv4 address", `{"ranges":[[{"subnet":"0.0.0.0/0"}]]}`, "", "", types.ErrInvalidNetworkConfig, "ipam.ranges[0][0].subnet"},
		{"every IPv6 address", `{"ranges":[[{"subnet":"10.0.0.0/24"}],[{"subnet":"::/0"}]]}`, "", "", types.ErrInvalidNetworkConfig, "ipam.ranges[1][0].subnet"},
		{"requested network address", `{"ranges":[[{"subnet":"10.0.0.0/24","rangeStart":"10.0.0.0"}]]}`, `,"runtimeConfig":{"ips":["10.0.0.0/24"]}`, "", types.ErrInvalidNetworkConfig, "runtimeConfig.ips[0]"},
		{"requested broadcast address", `{"ranges":[[{"subnet":"10.0.0.0/24","rangeEnd":"10.0.0.255"}]]}`, "", "IP=10.0.0.255", types.ErrInvalidNetworkConfig, "CNI_ARGS IP"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := load(tc.ipam, tc.extra, tc.args)
			var te *types.Error
			if !errors.As(err, &te) {
				t.Fatalf("err = %v, want a CNI error", err)
			}
			if te.Code != tc.code || !strings.Contains(te.Msg, tc.field) {
				t.Fatalf("got code %d %q; want code %d naming %q", te.Code, te.Msg, tc.code, tc.field)
			}
		})
	}
}

func TestMissingIPAMOrName(t *testing.T) {
	for _, in := range []string{`{"name":"n"}`, `{"ipam":{}}`, `{"name":"../x","ipam":{}}`, `not json`, `{"name":"n","ipam":{"dataDir":"rel"}}`} {
		if _, err := LoadStore([]byte(in)); err == nil {
			t.Errorf("%s: accepted", in)
		}
	}
}

// The shipped example configurations must stay valid.
func TestShippedExamplesLoad(t *testing.T) {
	files, _ := filepath.Glob("../../cni-conf/*.conflist")
	if len(files) == 0 {
		t.Fatal("no examples found in cni-conf/")
	}
	// The node's facts, as warpd publishes them, for examples that take
	// their ranges from the node's pod CIDRs.
	facts := filepath.Join(t.TempDir(), "node.json")
	os.WriteFile(facts, []byte(`{"node":"n1","podCIDRs":["10.244.1.0/24","fd00:10:244:1::/64"],"mtu":1450}`), 0o644)
	seen := 0
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var list struct {
			CNIVersion string            `json:"cniVersion"`
			Name       string            `json:"name"`
			Plugins    []json.RawMessage `json:"plugins"`
		}
		if err := json.Unmarshal(data, &list); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		for _, p := range list.Plugins {
			var conf map[string]any
			json.Unmarshal(p, &conf)
			ipam, _ := conf["ipam"].(map[string]any)
			if ipam["type"] != "warp-ipam" {
				continue
			}
			conf["name"], conf["cniVersion"] = list.Name, list.CNIVersion
			if strings.Contains(string(p), `"podCIDR"`) {
				ipam["nodeFacts"] = facts
			}
			b, _ := json.Marshal(conf)
			if _, err := Load(b, ""); err != nil {
				t.Errorf("%s: %v", f, err)
			}
			seen++
		}
	}
	if seen == 0 {
		t.Fatal("no example uses warp-ipam")
	}
}

// "subnet": "podCIDR" becomes one range set per pod CIDR warpd published;
// until then ADD must try again later (code 11).
func TestPodCIDR(t *testing.T) {
	facts := filepath.Join(t.TempDir(), "node.json")
	ipam := `{"ranges":[[{"subnet":"podCIDR"}]],"nodeFacts":"` + facts + `"}`
	_, err := load(ipam, "", "")
	var te *types.Error
	if !errors.As(err, &te) || te.Code != types.ErrTryAgainLater || !strings.Contains(te.Msg, "warpd") {
		t.Fatalf("before publication: %v, want code 11 naming warpd", err)
	}
	os.WriteFile(facts, []byte(`{"node":"n1","podCIDRs":["10.244.1.0/24","fd00:10:244:1::/64"],"mtu":1450,"routing":"auto"}`), 0o644)
	cfg, err := load(ipam, "", "")
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Ranges) != 2 || cfg.Ranges[0][0].Subnet.String() != "10.244.1.0/24" || cfg.Ranges[1][0].Subnet.String() != "fd00:10:244:1::/64" ||
		cfg.Ranges[0][0].Gateway.String() != "10.244.1.1" {
		t.Errorf("ranges = %+v", cfg.Ranges)
	}
	for in, field := range map[string]string{
		`{"ranges":[[{"subnet":"podCIDR","rangeStart":"10.244.1.5"}]],"nodeFacts":"` + facts + `"}`: "ipam.ranges[0][0]",
		`{"ranges":[[{"subnet":"podCIDR"},{"subnet":"10.9.0.0/24"}]],"nodeFacts":"` + facts + `"}`:  "ipam.ranges[0]",
		`{"ranges":[[{"subnet":"podCIDR"}]],"nodeFacts":"relative.json"}`:                           "ipam.nodeFacts",
	} {
		if _, err := load(in, "", ""); !errors.As(err, &te) || te.Code != types.ErrInvalidNetworkConfig || !strings.HasPrefix(te.Msg, field) {
			t.Errorf("%s: %v, want code 7 naming %s", in, err, field)
		}
	}
}
