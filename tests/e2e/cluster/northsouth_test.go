package cluster_test

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/warpnet/warpnet/tests/harness"
	"github.com/warpnet/warpnet/tests/k8s"
)

// answer is what testapp serve said: which pod, and the client address it
// saw.
type answer struct{ pod, client string }

// ask sends one request from the external host to addr (host:port) over
// TCP (HTTP) or UDP (a datagram), each time from a new source port.
func ask(ext *k8s.External, proto, addr string) (answer, error) {
	var line string
	var err error
	if proto == "tcp" {
		var body []byte
		_, body, err = harness.HTTPGet(ext.Do, addr, 3*time.Second)
		line = string(body)
	} else {
		err = ext.Do(func() error {
			conn, err := net.DialTimeout(proto, addr, 3*time.Second)
			if err != nil {
				return err
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(3 * time.Second))
			if _, err := conn.Write([]byte("hi")); err != nil {
				return err
			}
			line, err = bufio.NewReader(conn).ReadString('\n')
			return err
		})
	}
	if err != nil {
		return answer{}, err
	}
	// "<pod> <pod IPs> from <client address:port>"
	f := strings.Fields(line)
	if len(f) != 4 || f[2] != "from" {
		return answer{}, fmt.Errorf("unexpected answer %q", line)
	}
	host, _, err := net.SplitHostPort(f[3])
	return answer{pod: f[0], client: host}, err
}

// healthCheck fetches a healthCheckNodePort from the external host.
func healthCheck(ext *k8s.External, addr string) (int, map[string]any, error) {
	return harness.HTTPGetJSON(ext.Do, addr, 3*time.Second)
}

func nodePortOf(svc *corev1.Service, name string) string {
	for _, p := range svc.Spec.Ports {
		if p.Name == name {
			return fmt.Sprint(p.NodePort)
		}
	}
	return ""
}

// northSouth: a client outside the cluster (on the nodes' underlay, outside
// every cluster CIDR) reaches NodePort and LoadBalancer Services through
// either node's address, TCP and UDP, IPv4 and IPv6. Nothing but warpd's
// north-south load balancer can answer: the chart installed it
// (warpd.lb.attach=tc) and no kube-proxy runs.
func (w *world) northSouth(t *testing.T) {
	ctx := ctxFor(t, 5*time.Minute)
	cl := w.c.Client()
	ds, err := cl.AppsV1().DaemonSets("").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range ds.Items {
		if strings.Contains(d.Name, "kube-proxy") {
			t.Fatalf("a kube-proxy DaemonSet runs: %s/%s", d.Namespace, d.Name)
		}
	}
	ext, err := w.c.AddExternal()
	if err != nil {
		t.Fatal(err)
	}
	n1, n2 := w.node(0), w.node(1)
	w.apply(t, ctx, manifest(t, "northsouth.yaml", map[string]string{"IMAGE": k8s.AppImage, "NODE": n1.Name}))
	w.waitRollout(t, ctx, "Deployment", ns, "ns-web", 3*time.Minute)
	podOn := map[string]string{} // node -> its ns-web pod
	pods, err := cl.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=ns-web"})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		podOn[p.Spec.NodeName] = p.Name
		w.long[p.Name] = p.Spec.NodeName // they stay: later leftover checks count them
	}
	if podOn[n1.Name] == "" || podOn[n2.Name] == "" {
		t.Fatalf("ns-web's pods are not on both nodes: %v", podOn)
	}
	web, err := cl.CoreV1().Services(ns).Get(ctx, "ns-web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}

	// NodePort, through each node, each family, each protocol: both pods
	// answer (Maglev spreads the client's source ports over them). The pod
	// on the node dialled sees the client's address; the other one the
	// node's (SNAT: its replies must come back through that node).
	for _, n := range []*k8s.Node{n1, n2} {
		for _, fam := range []struct{ node, client string }{{n.IP, ext.IP}, {n.IP6, ext.IP6}} {
			for _, proto := range []string{"tcp", "udp"} {
				fe := net.JoinHostPort(fam.node, nodePortOf(web, proto))
				seen := map[string]string{} // pod -> client address it saw
				var lastErr error
				failed := 0
				start := time.Now()
				ok := harness.Until(90*time.Second, 100*time.Millisecond, func() bool {
					for range 10 {
						a, err := ask(ext, proto, fe)
						if err != nil {
							lastErr, failed = err, failed+1
							continue
						}
						seen[a.pod] = a.client
						if len(seen) == 2 {
							return true
						}
					}
					return false
				})
				if !ok {
					w.dumpWarpnetPods(t)
					t.Fatalf("%s %s from outside: answered by %v, want both of %v (%d failures, the last: %v)", proto, fe, seen, podOn, failed, lastErr)
				}
				t.Logf("%s %s: answered by both pods after %.1fs (%d failures before)", proto, fe, time.Since(start).Seconds(), failed)
				for node, pod := range podOn {
					want := fam.node // SNAT to a backend on the other node
					if node == n.Name {
						want = fam.client
					}
					if got, ok := seen[pod]; ok && got != want {
						t.Errorf("%s %s: %s (on %s) saw the client as %s, want %s", proto, fe, pod, node, got, want)
					}
				}
			}
		}
	}

	// LoadBalancer with externalTrafficPolicy: Local, its pod on node 1:
	// the pod sees the client's own address, node 1's health check port
	// says 200 with one local endpoint, node 2's 503 and node 2 does not
	// forward to node 1.
	harness.WaitFor(t, "pod ns-local running", 2*time.Minute, func() bool {
		p, err := cl.CoreV1().Pods(ns).Get(ctx, "ns-local", metav1.GetOptions{})
		return err == nil && p.Status.Phase == corev1.PodRunning
	})
	w.long["ns-local"] = n1.Name
	local, err := cl.CoreV1().Services(ns).Get(ctx, "ns-local", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	hc := fmt.Sprint(local.Spec.HealthCheckNodePort)
	if hc == "0" {
		t.Fatal("the API server allocated no healthCheckNodePort")
	}
	for _, fam := range []struct{ node, client string }{{n1.IP, ext.IP}, {n1.IP6, ext.IP6}} {
		fe := net.JoinHostPort(fam.node, nodePortOf(local, "tcp"))
		var a answer
		var err error
		if !harness.Until(60*time.Second, 100*time.Millisecond, func() bool {
			a, err = ask(ext, "tcp", fe)
			return err == nil && a.pod == "ns-local" && a.client == fam.client
		}) {
			t.Fatalf("%s (externalTrafficPolicy: Local) from outside: %+v %v, want ns-local to see the client as %s", fe, a, err, fam.client)
		}
	}
	for _, c := range []struct {
		n     *k8s.Node
		code  int
		local float64
	}{{n1, http.StatusOK, 1}, {n2, http.StatusServiceUnavailable, 0}} {
		addr := net.JoinHostPort(c.n.IP, hc)
		var code int
		var v map[string]any
		var err error
		if !harness.Until(60*time.Second, 100*time.Millisecond, func() bool {
			code, v, err = healthCheck(ext, addr)
			return err == nil && code == c.code
		}) {
			t.Fatalf("health check %s (%s): %d %v %v, want %d", addr, c.n.Name, code, v, err, c.code)
		}
		if v["localEndpoints"] != c.local || fmt.Sprint(v["service"]) != "map[name:ns-local namespace:default]" {
			t.Errorf("health check %s (%s): %d %v", addr, c.n.Name, code, v)
		}
		t.Logf("health check %s (%s): %d, localEndpoints %v", addr, c.n.Name, code, v["localEndpoints"])
	}
	if a, err := ask(ext, "tcp", net.JoinHostPort(n2.IP, nodePortOf(local, "tcp"))); err == nil {
		t.Errorf("%s (no local endpoint) answered: %+v", n2.Name, a)
	}

	// It was warpd's load balancer: it lists the frontends, and the nodes
	// hold no kube-proxy rules and no netfilter conntrack entry of the
	// client's flows.
	// (warpctl as README's "Running without kube-proxy" runs it: in the
	// warpd container)
	warpnet := w.warpnetPods(t, ctx)
	for _, n := range []*k8s.Node{n1, n2} {
		out, stderr, err := w.c.Exec(ctx, k8s.Namespace, warpnet[n.Name].Name, "warpd", "warpctl", "lb", "external")
		if err != nil {
			t.Fatalf("kubectl exec %s -c warpd -- warpctl lb external: %v\n%s", warpnet[n.Name].Name, err, stderr)
		}
		for _, want := range []string{net.JoinHostPort(n.IP, nodePortOf(web, "tcp")), net.JoinHostPort(n.IP6, nodePortOf(web, "udp"))} {
			if !strings.Contains(out, want) {
				t.Errorf("warpctl lb external on %s lacks %s:\n%s", n.Name, want, out)
			}
		}
		rules, err := n.Run(ctx, "sh", "-c", "iptables-save 2>/dev/null; ip6tables-save 2>/dev/null; nft list ruleset 2>/dev/null")
		if err != nil {
			t.Fatal(err)
		}
		for _, kp := range []string{"KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-SVC-", "table ip kube-proxy", "table ip6 kube-proxy"} {
			if strings.Contains(rules, kp) {
				t.Errorf("%s has kube-proxy's %s", n.Name, kp)
			}
		}
		ct, err := n.Run(ctx, "cat", "/proc/net/nf_conntrack")
		if err != nil {
			t.Fatal(err)
		}
		// The health checks are connections to warpd's own server on the
		// node, which netfilter tracks as any: they prove the check sees
		// the client's flows. The balanced ones must not be there.
		// (IPv6 addresses are written out in full there.)
		tracked := 0
		for _, l := range strings.Split(ct, "\n") {
			if !strings.Contains(l, "src="+ext.IP+" ") && !strings.Contains(l, "src="+netip.MustParseAddr(ext.IP6).StringExpanded()+" ") {
				continue
			}
			tracked++
			for _, p := range []string{nodePortOf(web, "tcp"), nodePortOf(web, "udp"), nodePortOf(local, "tcp")} {
				if strings.Contains(l, " dport="+p+" ") {
					t.Errorf("%s: a conntrack entry for the external client's balanced traffic: %s", n.Name, l)
				}
			}
		}
		if tracked == 0 {
			t.Errorf("%s: no conntrack entry of the client at all, not even its health checks: the check cannot see anything", n.Name)
		}
	}
}
