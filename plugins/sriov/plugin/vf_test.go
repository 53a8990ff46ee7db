package plugin

import (
	"net"
	"path/filepath"
	"testing"

	"github.com/warpnet/warpnet/internal/sriov/pf"
	"github.com/warpnet/warpnet/internal/sriov/sysfs"
	"github.com/warpnet/warpnet/plugins/sriov/config"
)

// countingPF records which setters ran, over the real recorder.
type countingPF struct {
	pf.PF
	calls []string
}

func (c *countingPF) SetMAC(p string, vf int, m net.HardwareAddr) error {
	c.calls = append(c.calls, "mac")
	return c.PF.SetMAC(p, vf, m)
}
func (c *countingPF) SetVLAN(p string, vf, v, q int, proto string) error {
	c.calls = append(c.calls, "vlan")
	return c.PF.SetVLAN(p, vf, v, q, proto)
}
func (c *countingPF) SetTrust(p string, vf int, on bool) error {
	c.calls = append(c.calls, "trust")
	return c.PF.SetTrust(p, vf, on)
}

func TestApplyOnlyWhatDiffersAndRestore(t *testing.T) {
	rec := pf.Recorder(filepath.Join(t.TempDir(), "pf.json"))
	ops := &countingPF{PF: rec}
	vf := sysfs.VF{PFName: "sim0", Index: 2}
	orig, err := ops.VF("sim0", 2)
	if err != nil {
		t.Fatal(err)
	}
	vlan, trust := 30, "on"
	conf := &config.NetConf{VLAN: &vlan, Trust: trust}
	want := desiredPF(orig, conf)
	if want.VLAN != 30 || !want.Trust || want.SpoofChk != orig.SpoofChk || want.MAC != orig.MAC {
		t.Fatalf("desired %+v from %+v", want, orig)
	}
	if err := applyPF(ops, vf, orig, want); err != nil {
		t.Fatal(err)
	}
	if len(ops.calls) != 2 || ops.calls[0] != "vlan" || ops.calls[1] != "trust" {
		t.Fatalf("setters run: %v; want only vlan and trust", ops.calls)
	}
	if got, _ := rec.VF("sim0", 2); got != want {
		t.Fatalf("recorded %+v, want %+v", got, want)
	}
	if err := restorePF(ops, vf, orig); err != nil {
		t.Fatal(err)
	}
	if got, _ := rec.VF("sim0", 2); got != orig {
		t.Fatalf("after restore %+v, want %+v", got, orig)
	}
}

// A VF whose pristine state has no admin MAC gets it cleared again (a
// tenant's MAC must not stay on the PF side).
func TestRestoreClearsAnAdminMAC(t *testing.T) {
	rec := pf.Recorder(filepath.Join(t.TempDir(), "pf.json"))
	vf := sysfs.VF{PFName: "sim0", Index: 0}
	orig, err := rec.VF("sim0", 0)
	if err != nil || orig.MAC != "" {
		t.Fatalf("default state %+v, %v; want no admin MAC", orig, err)
	}
	if err := applyPF(rec, vf, orig, desiredPF(orig, &config.NetConf{MAC: "0a:00:00:00:00:01"})); err != nil {
		t.Fatal(err)
	}
	if got, _ := rec.VF("sim0", 0); got.MAC != "0a:00:00:00:00:01" {
		t.Fatalf("MAC not applied: %+v", got)
	}
	if err := restorePF(rec, vf, orig); err != nil {
		t.Fatal(err)
	}
	if got, _ := rec.VF("sim0", 0); got != orig {
		t.Fatalf("after restore %+v, want %+v", got, orig)
	}
}
