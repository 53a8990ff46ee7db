package nodeport

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/warpnet/warpnet/internal/l4"
	"github.com/warpnet/warpnet/tests/harness"
)

// Prune removes defunct links only: after it the attached interfaces
// still serve; once an interface is gone, its link goes.
func TestPruneKeepsLiveLinks(t *testing.T) {
	c := newCluster(t, TC)
	c.debugOnFailure(t)
	svc := Service{ID: newID(), Proto: l4.TCP, Backends: backendsOf(false, c.a.pods[0])}
	c.service(t, svc, c.a)
	att, err := c.a.lb.Attachments()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range att {
		if a.Defunct {
			t.Errorf("%+v is live, reported defunct", a)
		}
	}
	if n, err := c.a.lb.Prune(); err != nil || n != 0 {
		t.Errorf("Prune removed %d (%v), want none", n, err)
	}
	server, _ := c.mustWho(t, "tcp", netip.AddrPortFrom(c.a.ip4, nodePort))
	if server != "pa0" {
		t.Errorf("answered by %s", server)
	}
	c.a.ns.Exec(t, "ip", "link", "del", c.a.pods[0].host)
	harness.WaitFor(t, "the pod link to be reported defunct", 10*time.Second, func() bool {
		att, err := c.a.lb.Attachments()
		return err == nil && slices.ContainsFunc(att, func(a Attachment) bool { return a.Defunct })
	})
	if n, err := c.a.lb.Prune(); err != nil || n != 1 {
		t.Errorf("Prune removed %d (%v), want the pod's link", n, err)
	}
}
