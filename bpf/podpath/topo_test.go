package podpath

import (
	"net/netip"
	"testing"

	"github.com/warpnet/warpnet/bpf/internal/topo"
)

// dpTopo is the routed topology with this package's datapath on it.
type dpTopo struct{ *topo.Topo }

func newTopo(t *testing.T, n int) dpTopo { return dpTopo{topo.New(t, n)} }

// endpoint returns p's Endpoint with the given owner and features.
func endpoint(p *topo.Pod, owner uint64, f Features) Endpoint {
	return Endpoint{
		Owner: owner, HostIfIndex: p.HostIdx, PodMAC: p.PodMAC, HostMAC: p.HostMAC,
		IPs: []netip.Addr{p.IP4, p.IP6}, Features: f,
	}
}

// open opens the datapath in the node namespace and closes it at cleanup.
func (tp dpTopo) open() *Datapath {
	tp.T.Helper()
	var d *Datapath
	tp.InNode(func() (err error) { d, err = Open(tp.PinDir); return err })
	tp.T.Cleanup(func() { d.Close() })
	return d
}

// register adds the pod's endpoint and attaches its programs: XDP on both
// ends, or the tc program on the host end.
func (tp dpTopo) register(d *Datapath, p *topo.Pod, owner uint64, f Features) {
	tp.T.Helper()
	tp.InNode(func() error {
		if err := d.AddEndpoint(endpoint(p, owner, f)); err != nil {
			return err
		}
		if f.Hook == TC {
			return d.AttachTC(owner, p.HostIdx)
		}
		return d.AttachHost(p.HostIdx)
	})
	if f.Hook == TC {
		return
	}
	if err := p.NS.Do(func() error { return d.AttachPod(p.PodIdx) }); err != nil {
		tp.T.Fatal(err)
	}
}

// on is every feature on, served by hook.
func on(hook Hook) Features { return Features{Hook: hook, Redirect: true, AntiSpoof: true} }

func (tp dpTopo) counters(d *Datapath, p *topo.Pod) Counters {
	tp.T.Helper()
	c, err := d.Counters(p.HostIdx)
	if err != nil {
		tp.T.Fatal(err)
	}
	return c
}
