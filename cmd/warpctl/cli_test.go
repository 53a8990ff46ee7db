package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/warpnet/warpnet/internal/sriov/pf"
	"github.com/warpnet/warpnet/tests/harness"
)

// run executes warpctl in-process.
func run(args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = execute(rootCommand(), args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestHelpEverywhere(t *testing.T) {
	for _, path := range [][]string{
		{}, {"sim"}, {"sim", "sriov"}, {"sim", "sriov", "create"}, {"sim", "sriov", "show"}, {"sim", "sriov", "destroy"},
		{"lb"}, {"lb", "services"}, {"lb", "affinity"}, {"lb", "revnat"}, {"lb", "hooks"}, {"lb", "external"}, {"lb", "maglev"}, {"lb", "conns"}, {"podpath"}, {"podpath", "endpoints"}, {"podpath", "nexthops"},
		{"warpd"}, {"warpd", "status"},
	} {
		leaf := len(path) == 3 || (len(path) == 2 && path[0] != "sim")
		for _, h := range []string{"--help", "-h", "help"} {
			if h == "help" && leaf {
				continue // a leaf takes flags only
			}
			args := append(append([]string{}, path...), h)
			code, out, errOut := run(args...)
			want := "Usage: " + strings.Join(append([]string{"warpctl"}, path...), " ")
			if code != 0 || !strings.HasPrefix(out, want) || errOut != "" {
				t.Errorf("warpctl %s: exit %d, stdout %q, stderr %q", strings.Join(args, " "), code, out, errOut)
			}
		}
	}
	_, out, _ := run("sim", "sriov", "--help")
	for _, sub := range []string{"create", "show", "destroy"} {
		if !strings.Contains(out, "  "+sub+" ") {
			t.Errorf("sriov help does not list %s:\n%s", sub, out)
		}
	}
	_, out, _ = run("sim", "sriov", "create", "--help")
	for _, flag := range []string{"--netns PATH", "--dir DIR", "--vfs N", "--dpdk INDEXES", "--pf NAME", "--bus DDDD:BB", "(default sim0)", "--help"} {
		if !strings.Contains(out, flag) {
			t.Errorf("create help lacks %q:\n%s", flag, out)
		}
	}
}

func TestUsageErrors(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{nil, "missing command"},
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"sim", "sriov"}, "missing command"},
		{[]string{"sim", "sriov", "create"}, "missing --netns, --dir, --vfs"},
		{[]string{"sim", "sriov", "create", "--netns", "/run/netns/x", "--dir", "d"}, "missing --vfs"},
		{[]string{"sim", "sriov", "create", "--vfs", "x"}, "invalid value"},
		{[]string{"sim", "sriov", "create", "--dpdk", "a"}, "not a VF index"},
		{[]string{"sim", "sriov", "show"}, "missing --dir"},
		{[]string{"sim", "sriov", "show", "--dir", "d", "--json", "--env"}, "exclude each other"},
		{[]string{"sim", "sriov", "show", "--bogus"}, "flag provided but not defined"},
		{[]string{"sim", "sriov", "destroy", "extra"}, `unexpected argument "extra"`},
	} {
		code, out, errOut := run(c.args...)
		if code != 2 || out != "" || !strings.Contains(errOut, c.want) || !strings.Contains(errOut, "--help") {
			t.Errorf("warpctl %s: exit %d, stdout %q, stderr %q; want exit 2 and %q with a --help hint", strings.Join(c.args, " "), code, out, errOut, c.want)
		}
	}
	// A directory without a simulator is a failure (1) that says what to do.
	dir := t.TempDir()
	for _, cmd := range []string{"show", "destroy"} {
		code, _, errOut := run("sim", "sriov", cmd, "--dir", dir)
		if code != 1 || !strings.Contains(errOut, "no simulator") || !strings.Contains(errOut, "warpctl sim sriov create") {
			t.Errorf("%s on an empty dir: exit %d, stderr %q", cmd, code, errOut)
		}
	}
}

func TestSimSriovInProcess(t *testing.T) {
	e := harness.New(t)
	node, pod := e.NetNS("node"), e.NetNS("pod")
	dir := filepath.Join(e.TempDir, "sim")

	code, out, errOut := run("sim", "sriov", "create", "--netns", node.Path, "--dir", dir, "--vfs", "4", "--dpdk", "3", "--pf", "ens7", "--bus", "0000:5e")
	if code != 0 {
		t.Fatalf("create: exit %d\n%s%s", code, out, errOut)
	}
	e.Defer("destroy simulator", func() error { run("sim", "sriov", "destroy", "--dir", dir); return nil })
	for _, want := range []string{
		"created PF ens7 (PCI 0000:5e:00.0) with 4 VFs in " + node.Path,
		"WARP_SYSFS_ROOT=" + filepath.Join(dir, "sysfs") + "\n",
		"WARP_SIM_PF_STATE=" + filepath.Join(dir, "pf-state.json") + "\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("create output lacks %q:\n%s", want, out)
		}
	}
	if !regexp.MustCompile(`(?m)^3\s+0000:5e:02\.3\s+vfio-pci\s+-\s+02:`).MatchString(out) {
		t.Errorf("create output lacks the DPDK VF row:\n%s", out)
	}
	if code, _, errOut := run("sim", "sriov", "create", "--netns", node.Path, "--dir", dir, "--vfs", "4"); code != 1 || !strings.Contains(errOut, "destroy") {
		t.Errorf("second create: exit %d, %s", code, errOut)
	}

	// Something a plugin did: PF-side settings on VF 1, VF 0 moved to a pod.
	rec := pf.Recorder(filepath.Join(dir, "pf-state.json"))
	if err := rec.SetVLAN("ens7", 1, 42, 3, "802.1ad"); err != nil {
		t.Fatal(err)
	}
	if err := rec.SetTrust("ens7", 1, true); err != nil {
		t.Fatal(err)
	}
	if err := rec.SetRate("ens7", 1, 10, 500); err != nil {
		t.Fatal(err)
	}
	node.Exec(t, "ip", "link", "set", "ens7v0", "netns", pod.Name)

	code, out, errOut = run("sim", "sriov", "show", "--dir", dir)
	if code != 0 {
		t.Fatalf("show: exit %d\n%s", code, errOut)
	}
	for _, re := range []string{
		`PF ens7\s+PCI 0000:5e:00\.0\s+link up`,
		`(?m)^VF\s+PCI\s+DRIVER\s+NETDEV\s+LINK\s+MAC\s+ADMIN MAC\s+VLAN\s+QOS\s+PROTO\s+SPOOFCHK\s+TRUST\s+LINK STATE\s+MIN TX\s+MAX TX$`,
		`(?m)^0\s+0000:5e:02\.0\s+sim-vf\s+ens7v0\s+gone\s+(02:\S+)\s+02:\S+\s+0\s+0\s+802\.1q\s+on\s+off\s+auto\s+0\s+0$`,
		`(?m)^1\s+0000:5e:02\.1\s+sim-vf\s+ens7v1\s+down\s+02:\S+\s+02:\S+\s+42\s+3\s+802\.1ad\s+on\s+on\s+auto\s+10\s+500$`,
		`(?m)^3\s+0000:5e:02\.3\s+vfio-pci\s+-\s+-\s+02:`,
	} {
		if !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("show output does not match %s:\n%s", re, out)
		}
	}

	code, out, _ = run("sim", "sriov", "show", "--dir", dir, "--json")
	var v showView
	if code != 0 || json.Unmarshal([]byte(out), &v) != nil {
		t.Fatalf("show --json: exit %d\n%s", code, out)
	}
	if v.PF.Name != "ens7" || len(v.VFs) != 4 || v.VFs[1].State.VLAN != 42 || !v.VFs[1].State.Trust ||
		v.VFs[0].Link != "gone" || v.VFs[3].Driver != "vfio-pci" || v.VFs[3].Netdev != "" || len(v.Env) != 2 {
		t.Errorf("show --json: %+v", v)
	}

	code, out, _ = run("sim", "sriov", "show", "--dir", dir, "--env")
	if want := "WARP_SYSFS_ROOT=" + filepath.Join(dir, "sysfs") + "\nWARP_SIM_PF_STATE=" + filepath.Join(dir, "pf-state.json") + "\n"; code != 0 || out != want {
		t.Errorf("show --env: exit %d, %q; want %q", code, out, want)
	}

	code, out, errOut = run("sim", "sriov", "destroy", "--dir", dir)
	if code != 0 || !strings.Contains(out, "destroyed PF ens7") {
		t.Fatalf("destroy: exit %d\n%s%s", code, out, errOut)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("%s still there after destroy", dir)
	}
	if out := node.Exec(t, "ip", "-br", "link"); strings.Contains(out, "ens7") {
		t.Errorf("links left in the node:\n%s", out)
	}
	if out := pod.Exec(t, "ip", "-br", "link"); strings.Contains(out, "ens7") {
		t.Errorf("the VF in the pod survived destroy:\n%s", out)
	}
}

// TestBinary builds warpctl and runs create, show and destroy as a user
// would.
func TestBinary(t *testing.T) {
	e := harness.New(t)
	harness.RequireTools(t, "go")
	bin := filepath.Join(e.TempDir, "warpctl")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	node := e.NetNS("node")
	dir := filepath.Join(e.TempDir, "sim")
	runBin := func(wantCode int, args ...string) string {
		t.Helper()
		cmd := exec.Command(bin, args...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, _ := cmd.Output()
		if code := cmd.ProcessState.ExitCode(); code != wantCode {
			t.Fatalf("warpctl %s: exit %d, want %d\n%s%s", strings.Join(args, " "), code, wantCode, out, stderr.String())
		}
		return string(out) + stderr.String()
	}
	runBin(0, "sim", "sriov", "create", "--netns", node.Path, "--dir", dir, "--vfs", "2")
	e.Defer("destroy simulator", func() error { exec.Command(bin, "sim", "sriov", "destroy", "--dir", dir).Run(); return nil })
	if out := runBin(0, "sim", "sriov", "show", "--dir", dir); !strings.Contains(out, "sim0v1") {
		t.Errorf("show:\n%s", out)
	}
	if out := node.Exec(t, "ip", "-br", "link"); !strings.Contains(out, "sim0v0") {
		t.Errorf("node links after create:\n%s", out)
	}
	runBin(0, "sim", "sriov", "destroy", "--dir", dir)
	runBin(1, "sim", "sriov", "destroy", "--dir", dir)
	runBin(2, "sim", "sriov", "create")
	if out := runBin(0, "--help"); !strings.Contains(out, "Usage: warpctl") {
		t.Errorf("--help:\n%s", out)
	}
}
