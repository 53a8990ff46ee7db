package warpd_test

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/warpnet/warpnet/bpf/servicelb"
)

// waitWeb waits until the web service's TCP frontend holds exactly the
// given pods as backends, with the given affinity timeout.
func (c *cluster) waitWeb(affinity time.Duration, pods ...string) {
	c.t.Helper()
	var want []string
	for _, p := range pods {
		want = append(want, c.podIPs[p])
	}
	sort.Strings(want)
	c.waitLB(fmt.Sprintf("%v with backends %v and affinity %v", webFrontend, want, affinity), func(svcs []servicelb.Service) bool {
		for _, s := range svcs {
			if s.Frontend != webFrontend || s.AffinityTimeout != affinity {
				continue
			}
			var got []string
			for _, b := range s.Backends {
				got = append(got, b.Addr.String())
			}
			sort.Strings(got)
			return slices.Equal(got, want)
		}
		return false
	})
}

// EndpointSlice conditions and session affinity, from both sources; with
// the API server, losing it keeps the datapath, and once it is back, changes
// are programmed again.
func TestEndpointConditionsAndAffinity(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) {
			c := newCluster(t, mode, "pod1", "pod2")
			c.applyWeb(0, epState{"pod1", true, true, false}, epState{"pod2", true, true, false})
			warpd := c.startWarpd()
			c.waitWeb(0, "pod1", "pod2")

			t.Run("a not-ready endpoint is dropped", func(t *testing.T) {
				c.applyWeb(0, epState{"pod1", false, false, false}, epState{"pod2", true, true, false})
				c.waitWeb(0, "pod2")
				if seen := c.answeredBy("tcp", "80", 10); seen["pod2"] != 10 {
					t.Fatalf("answers %v", seen)
				}
			})
			t.Run("terminating but serving endpoints when none is ready", func(t *testing.T) {
				c.applyWeb(0, epState{"pod1", false, true, true}, epState{"pod2", false, false, true})
				c.waitWeb(0, "pod1")
				if seen := c.answeredBy("tcp", "80", 10); seen["pod1"] != 10 {
					t.Fatalf("answers %v", seen)
				}
			})
			t.Run("ClientIP affinity keeps a client on one backend", func(t *testing.T) {
				c.applyWeb(60, epState{"pod1", true, true, false}, epState{"pod2", true, true, false})
				c.waitWeb(time.Minute, "pod1", "pod2")
				seen := c.answeredBy("tcp", "80", 15)
				if len(seen) != 1 {
					t.Fatalf("one client must stick to one backend: %v", seen)
				}
				// warpctl lb affinity shows the client's entry: that backend.
				var server string
				for server = range seen {
				}
				if e := c.webAffinity(); e.Backend.Addr != c.podIPs[server] {
					t.Fatalf("affinity entry %+v, but %s (%s) answered", e, server, c.podIPs[server])
				}
				out, err := c.warpctl("lb", "affinity", "--bpffs-root", c.bpffs)
				if err != nil || !strings.Contains(out, "SERVICE ID") || !strings.Contains(squash(out), "tcp "+c.podIPs[server]+":8080") {
					t.Fatalf("warpctl lb affinity: %v\n%s", err, out)
				}
			})
			if mode == "api" {
				t.Run("losing the API server keeps the datapath", func(t *testing.T) {
					lost := "cannot reach the API server"
					before := logCount(warpd, lost)
					c.api.Stop(t)
					c.waitLog(warpd, lost, before) // warpd has noticed
					if seen := c.answeredBy("tcp", "80", 5); seen["pod1"]+seen["pod2"] != 5 {
						t.Fatalf("answers %v", seen)
					}
					if code, body := c.mustGet("/healthz"); code != 200 {
						t.Fatalf("/healthz %d %s: the datapath is as it was, warpd is healthy", code, body)
					}
				})
				t.Run("once the API server is back, changes are programmed", func(t *testing.T) {
					c.api.Restart(t)
					c.applyWeb(0, epState{"pod2", true, true, false})
					c.waitWeb(0, "pod2")
					if seen := c.answeredBy("tcp", "80", 5); seen["pod2"] != 5 {
						t.Fatalf("answers %v", seen)
					}
				})
			}
		})
	}
}
