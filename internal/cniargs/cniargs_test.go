package cniargs

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

func TestParse(t *testing.T) {
	a, err := Parse("IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;IP=10.0.0.5,fd00::5/64;MAC=0a:00:00:00:00:01;FOO=bar")
	if err != nil {
		t.Fatal(err)
	}
	if string(a.K8S_POD_NAMESPACE) != "ns" || string(a.K8S_POD_NAME) != "p" || string(a.MAC) != "0a:00:00:00:00:01" {
		t.Errorf("got %+v", a)
	}
	want := IPs{netip.MustParseAddr("10.0.0.5"), netip.MustParseAddr("fd00::5")}
	if len(a.IP) != 2 || a.IP[0] != want[0] || a.IP[1] != want[1] {
		t.Errorf("IP = %v, want %v", a.IP, want)
	}
	if a, err := Parse(""); err != nil || len(a.IP) != 0 {
		t.Errorf("empty: %+v, %v", a, err)
	}
}

func TestParseErrors(t *testing.T) {
	for env, want := range map[string]string{
		"IP=10.0.0.5;oops":          `invalid pair "oops"`,
		"FOO=bar":                   "unknown args",
		"IgnoreUnknown=1;IP=10.0.0": `"10.0.0" is not an IP address`,
	} {
		_, err := Parse(env)
		te, ok := err.(*types.Error)
		if !ok || te.Code != types.ErrInvalidEnvironmentVariables || !strings.Contains(te.Msg, want) || !strings.HasPrefix(te.Msg, "CNI_ARGS: ") {
			t.Errorf("Parse(%q) = %v, want code 4 containing %q", env, err, want)
		}
	}
}
