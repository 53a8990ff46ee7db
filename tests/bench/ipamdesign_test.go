package bench

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/warpnet/warpnet/tests/apiserver"
	"github.com/warpnet/warpnet/tests/harness"
)

// How warp-ipam's kubernetes store claims an address was chosen by this
// measurement (README: "How the kubernetes store claims an address"). The
// two designs the issue allows, reduced to their API traffic, against a
// real API server, as 4 nodes × 50 concurrent plugin processes would drive
// them; every claim opens its own connection, as a plugin process does:
//
//   - object per address: the claim is the create of an object named after
//     the address (taken: the next candidate). A node lock hands out
//     candidates from a per-node cursor (nodes start in different parts of
//     the pool).
//   - per-node blocks: each node claims blocks of 64 addresses (an object
//     per block, claimed by create); an address is claimed by a
//     compare-and-swap update of the block's object (its resourceVersion),
//     read first, since a new process has nothing cached. The node's claims
//     on its own blocks are serialised by a node lock (concurrent updates of
//     one object would only fail each other).
//
// ConfigMaps stand for both kinds of object, so storage costs the same.

const (
	designClaims    = 1000
	designBlockSize = 64
)

type designResult struct {
	name     string
	lat      []time.Duration
	wall     time.Duration
	requests int
	errs     int
}

func BenchmarkIPAMClaimDesigns(b *testing.B) {
	harness.RequireTools(b, "etcd")
	api := apiserver.Start(b)
	rc := rest.CopyConfig(api.RESTConfig())
	rc.QPS, rc.Burst = 5000, 5000
	// fresh returns a clientset on a connection of its own, as a new
	// plugin process would have.
	fresh := func() kubernetes.Interface {
		c := rest.CopyConfig(rc)
		c.Transport = &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, ForceAttemptHTTP2: true}
		c.TLSClientConfig, c.BearerToken = rest.TLSClientConfig{}, ""
		c.WrapTransport = func(rt http.RoundTripper) http.RoundTripper { return bearerRT{api.Token, rt} }
		return kubernetes.NewForConfigOrDie(c)
	}
	admin := kubernetes.NewForConfigOrDie(rc)
	for _, ns := range []string{"per-address", "per-address-unlocked", "blocks"} {
		if _, err := admin.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
	}
	const pool = 4096
	results := []designResult{
		runDesign(b, "object per address (create), node lock held during the create", func(node int, state *nodeState) (int, error) {
			state.mu.Lock()
			defer state.mu.Unlock()
			c := fresh()
			reqs := 0
			for {
				ip := state.next(node, pool)
				reqs++
				_, err := c.CoreV1().ConfigMaps("per-address").Create(context.Background(), &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("ip-%d", ip)}}, metav1.CreateOptions{})
				if !apierrors.IsAlreadyExists(err) {
					return reqs, err
				}
			}
		}),
		runDesign(b, "object per address (create), node lock only to pick the candidate", func(node int, state *nodeState) (int, error) {
			c := fresh()
			reqs := 0
			for {
				state.mu.Lock()
				ip := state.next(node, pool)
				state.mu.Unlock()
				reqs++
				_, err := c.CoreV1().ConfigMaps("per-address-unlocked").Create(context.Background(), &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("ip-%d", ip)}}, metav1.CreateOptions{})
				if !apierrors.IsAlreadyExists(err) {
					return reqs, err
				}
			}
		}),
		runDesign(b, "per-node blocks of 64 (compare-and-swap on resourceVersion), node lock", func(node int, state *nodeState) (int, error) {
			state.mu.Lock()
			defer state.mu.Unlock()
			c := fresh()
			cms := c.CoreV1().ConfigMaps("blocks")
			reqs := 0
			for attempt := 0; attempt < 100; attempt++ {
				if state.block == "" || state.used >= designBlockSize {
					// Claim the next free block of the pool.
					state.blockN = state.nextBlock(node, pool/designBlockSize)
					name := fmt.Sprintf("block-%d", state.blockN)
					reqs++
					_, err := cms.Create(context.Background(), &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name}, Data: map[string]string{"node": fmt.Sprint(node)}}, metav1.CreateOptions{})
					if apierrors.IsAlreadyExists(err) {
						continue
					}
					if err != nil {
						return reqs, err
					}
					state.block, state.used = name, 0
				}
				reqs++
				cm, err := cms.Get(context.Background(), state.block, metav1.GetOptions{})
				if err != nil {
					return reqs, err
				}
				if cm.Data == nil {
					cm.Data = map[string]string{}
				}
				slot := ""
				for i := 0; i < designBlockSize; i++ {
					if _, ok := cm.Data[fmt.Sprint(i)]; !ok {
						slot = fmt.Sprint(i)
						break
					}
				}
				if slot == "" {
					state.used = designBlockSize
					continue
				}
				cm.Data[slot] = fmt.Sprintf("container-%d-%d", node, attempt)
				reqs++
				_, err = cms.Update(context.Background(), cm, metav1.UpdateOptions{})
				if apierrors.IsConflict(err) {
					continue
				}
				if err == nil {
					state.used++
				}
				return reqs, err
			}
			return reqs, fmt.Errorf("no slot after 100 attempts")
		}),
	}
	var out strings.Builder
	fmt.Fprintf(&out, "%d claims per design from 4 nodes × 50 concurrent claimers, each claim on a connection of its own (as a plugin process), "+
		"against one real kube-apiserver with etcd; claims are of the API server only (no plugin process), to compare the designs.\n\n", designClaims)
	out.WriteString("| design | claims/s | claim p50 | claim p99 (or max) | API requests per claim | errors |\n|---|---:|---:|---:|---:|---:|\n")
	for _, r := range results {
		label, q := quantile(len(r.lat))
		fmt.Fprintf(&out, "| %s | %.0f | %s | %s (%s) | %.2f | %d |\n", r.name, float64(len(r.lat))/r.wall.Seconds(), roundMs(pct(r.lat, 0.5)),
			roundMs(pct(r.lat, q)), label, float64(r.requests)/float64(max(len(r.lat), 1)), r.errs)
	}
	publish(b, "ipam-claim-designs", out.String())
}

// nodeState is one simulated node's local state: its lock, its cursor, and
// for blocks the block it fills.
type nodeState struct {
	mu           sync.Mutex
	cursor       int
	started      bool
	block        string
	blockN, used int
	blockStarted bool
	blockCursor  int
}

// next is the node's next candidate address; nodes start a quarter of the
// pool apart.
func (s *nodeState) next(node, pool int) int {
	if !s.started {
		s.started, s.cursor = true, node*pool/4
	}
	ip := s.cursor % pool
	s.cursor++
	return ip
}

func (s *nodeState) nextBlock(node, blocks int) int {
	if !s.blockStarted {
		s.blockStarted, s.blockCursor = true, node*blocks/4
	}
	n := s.blockCursor % blocks
	s.blockCursor++
	return n
}

func runDesign(b *testing.B, name string, claim func(node int, st *nodeState) (int, error)) designResult {
	r := designResult{name: name}
	var mu sync.Mutex
	jobs := make(chan int, designClaims)
	for i := range designClaims {
		jobs <- i
	}
	close(jobs)
	states := make([]*nodeState, 4)
	for i := range states {
		states[i] = &nodeState{}
	}
	start := time.Now()
	var wg sync.WaitGroup
	for node := range 4 {
		for range 50 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range jobs {
					t0 := time.Now()
					n, err := claim(node, states[node])
					took := time.Since(t0)
					mu.Lock()
					r.requests += n
					if err != nil {
						r.errs++
					} else {
						r.lat = append(r.lat, took)
					}
					mu.Unlock()
				}
			}()
		}
	}
	wg.Wait()
	r.wall = time.Since(start)
	b.Logf("%s: %d claims in %v, %d errors", name, len(r.lat), r.wall.Round(time.Millisecond), r.errs)
	return r
}

type bearerRT struct {
	token string
	next  http.RoundTripper
}

func (t bearerRT) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+t.token)
	return t.next.RoundTrip(r)
}

var _ = json.Marshal
