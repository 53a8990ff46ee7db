package warpd_test

import (
	"fmt"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/warpnet/warpnet/bpf/servicelb"
)

// waitFor waits until the web service's TCP frontend holds exactly the
// given pods as backends, with the given affinity timeout.
func (c *cluster) waitFor(affinity time.Duration, pods ...string) {
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
// the API server, losing it keeps the datapath.
func TestEndpointConditionsAndAffinity(t *testing.T) {
	for _, mode := range modes {
		t.Run(mode, func(t *testing.T) {
			c := newCluster(t, mode, "pod1", "pod2")
			c.applyWeb(0, epState{"pod1", true, true, false}, epState{"pod2", true, true, false})
			c.startWarpd()
			c.waitFor(0, "pod1", "pod2")

			t.Run("a not-ready endpoint is dropped", func(t *testing.T) {
				c.applyWeb(0, epState{"pod1", false, false, false}, epState{"pod2", true, true, false})
				c.waitFor(0, "pod2")
				if seen := c.answeredBy("tcp", "80", 10); seen["pod2"] != 10 {
					t.Fatalf("answers %v", seen)
				}
			})
			t.Run("terminating but serving endpoints when none is ready", func(t *testing.T) {
				c.applyWeb(0, epState{"pod1", false, true, true}, epState{"pod2", false, false, true})
				c.waitFor(0, "pod1")
				if seen := c.answeredBy("tcp", "80", 10); seen["pod1"] != 10 {
					t.Fatalf("answers %v", seen)
				}
			})
			t.Run("ClientIP affinity keeps a client on one backend", func(t *testing.T) {
				c.applyWeb(60, epState{"pod1", true, true, false}, epState{"pod2", true, true, false})
				c.waitFor(time.Minute, "pod1", "pod2")
				if seen := c.answeredBy("tcp", "80", 15); len(seen) != 1 {
					t.Fatalf("one client must stick to one backend: %v", seen)
				}
			})
			if mode == "api" {
				t.Run("losing the API server keeps the datapath", func(t *testing.T) {
					c.api.Stop(t)
					time.Sleep(500 * time.Millisecond)
					if seen := c.answeredBy("tcp", "80", 5); seen["pod1"]+seen["pod2"] != 5 {
						t.Fatalf("answers %v", seen)
					}
				})
			}
		})
	}
}
