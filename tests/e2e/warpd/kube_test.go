package warpd_test

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/warpnet/warpnet/bpf"
	"github.com/warpnet/warpnet/tests/apiserver"
	"github.com/warpnet/warpnet/tests/harness"
)

// kubeCluster is a cluster whose warpd reads a real kube-apiserver.
type kubeCluster struct {
	*cluster
	api    *apiserver.Server
	client kubernetes.Interface
	svcIP  string
}

func newKubeCluster(t *testing.T, backends ...string) *kubeCluster {
	c := newCluster(t, "api", backends...)
	k := &kubeCluster{cluster: c, api: c.api, client: c.kube}
	ctx := context.Background()
	if _, err := k.client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	svc, err := k.client.CoreV1().Services("shop").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{
			{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromInt32(backendPort)},
			{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP, TargetPort: intstr.FromInt32(backendPort)},
		}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	k.svcIP = svc.Spec.ClusterIP
	return k
}

// startWarpd runs warpd in the machine's namespace (cgroup BPF is not per
// network namespace, and the API server listens on the machine's loopback),
// with the node's addresses given so nothing of the machine is detected.
func (k *kubeCluster) startWarpd(t *testing.T) *exec.Cmd {
	cmd := exec.Command(filepath.Join(harness.BinDir(), "warpd"), "--kubeconfig", k.api.Kubeconfig, "--cgroup-root", k.pods.Path,
		"--bpffs-root", k.bpffs, "--node-name", "node1", "--node-ip", "10.0.0.1", "--listen", "")
	out := &harness.OutputBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("warpd output:\n%s", out.String())
		}
	})
	return cmd
}

type epState struct {
	pod                         string
	ready, serving, terminating bool
}

func (k *kubeCluster) setEndpoints(t *testing.T, eps ...epState) {
	ctx := context.Background()
	name, udp, tcp, port := "http", corev1.ProtocolUDP, corev1.ProtocolTCP, int32(backendPort)
	dns := "dns"
	es := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: "web-1", Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &name, Port: &port, Protocol: &tcp}, {Name: &dns, Port: &port, Protocol: &udp}},
	}
	for _, e := range eps {
		e := e
		node := "node1"
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{k.podIPs[e.pod]}, NodeName: &node,
			Conditions: discoveryv1.EndpointConditions{Ready: &e.ready, Serving: &e.serving, Terminating: &e.terminating}})
	}
	cur, err := k.client.DiscoveryV1().EndpointSlices("shop").Get(ctx, "web-1", metav1.GetOptions{})
	if err == nil {
		es.ResourceVersion = cur.ResourceVersion
		_, err = k.client.DiscoveryV1().EndpointSlices("shop").Update(ctx, es, metav1.UpdateOptions{})
	} else {
		_, err = k.client.DiscoveryV1().EndpointSlices("shop").Create(ctx, es, metav1.CreateOptions{})
	}
	if err != nil {
		t.Fatal(err)
	}
}

// waitFor waits until the TCP frontend holds exactly the given backends.
func (k *kubeCluster) waitFor(t *testing.T, pods ...string) {
	t.Helper()
	fe := bpf.Frontend{Addr: netip.MustParseAddr(k.svcIP), Port: 80, Proto: bpf.TCP}
	var want []string
	for _, p := range pods {
		want = append(want, k.podIPs[p])
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		var got []string
		if lb, err := bpf.OpenLB(k.bpffs, bpf.LBSizes{}); err == nil {
			svcs, _ := lb.Services()
			lb.Close()
			for _, s := range svcs {
				if s.Frontend == fe {
					for _, b := range s.Backends {
						got = append(got, b.Addr.String())
					}
				}
			}
		}
		if fmt.Sprint(sortStrings(got)) == fmt.Sprint(sortStrings(want)) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%v has backends %v, want %v", fe, got, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func sortStrings(s []string) []string {
	out := append([]string(nil), s...)
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

func (k *kubeCluster) answers(t *testing.T, proto, port string, n int) map[string]int {
	t.Helper()
	seen := map[string]int{}
	for i := 0; i < n; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		out, err := k.pods.Run(ctx, k.clientPod, "hello", "socat", "-T1", "-", strings.ToUpper(proto)+":"+k.svcIP+":"+port)
		cancel()
		if err != nil {
			t.Fatalf("%s to %s:%s: %v", proto, k.svcIP, port, err)
		}
		server, _, _ := strings.Cut(strings.TrimSpace(out), ":")
		seen[server]++
	}
	return seen
}

func TestServicesFromTheAPIServer(t *testing.T) {
	k := newKubeCluster(t, "pod1", "pod2")
	k.setEndpoints(t, epState{"pod1", true, true, false}, epState{"pod2", true, true, false})
	k.startWarpd(t)
	k.waitFor(t, "pod1", "pod2")

	t.Run("TCP and UDP reach both backends", func(t *testing.T) {
		if seen := k.answers(t, "tcp", "80", 30); seen["pod1"] == 0 || seen["pod2"] == 0 {
			t.Fatalf("answers %v", seen)
		}
		if seen := k.answers(t, "udp", "53", 6); seen["pod1"]+seen["pod2"] != 6 {
			t.Fatalf("answers %v", seen)
		}
	})
	t.Run("a not-ready endpoint is dropped", func(t *testing.T) {
		k.setEndpoints(t, epState{"pod1", false, false, false}, epState{"pod2", true, true, false})
		k.waitFor(t, "pod2")
		if seen := k.answers(t, "tcp", "80", 10); seen["pod2"] != 10 {
			t.Fatalf("answers %v", seen)
		}
	})
	t.Run("terminating but serving endpoints when none is ready", func(t *testing.T) {
		k.setEndpoints(t, epState{"pod1", false, true, true}, epState{"pod2", false, false, true})
		k.waitFor(t, "pod1")
		if seen := k.answers(t, "tcp", "80", 10); seen["pod1"] != 10 {
			t.Fatalf("answers %v", seen)
		}
	})
	t.Run("session affinity", func(t *testing.T) {
		k.setEndpoints(t, epState{"pod1", true, true, false}, epState{"pod2", true, true, false})
		k.waitFor(t, "pod1", "pod2")
		svc, err := k.client.CoreV1().Services("shop").Get(context.Background(), "web", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		timeout := int32(60)
		svc.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
		svc.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: &timeout}}
		if _, err := k.client.CoreV1().Services("shop").Update(context.Background(), svc, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(20 * time.Second)
		for {
			lb, err := bpf.OpenLB(k.bpffs, bpf.LBSizes{})
			if err == nil {
				svcs, _ := lb.Services()
				lb.Close()
				done := false
				for _, s := range svcs {
					done = done || (s.Port == 80 && s.AffinityTimeout == time.Minute)
				}
				if done {
					break
				}
			}
			if time.Now().After(deadline) {
				t.Fatal("affinity not programmed")
			}
			time.Sleep(50 * time.Millisecond)
		}
		if seen := k.answers(t, "tcp", "80", 15); len(seen) != 1 {
			t.Fatalf("with ClientIP affinity one client must stick to one backend: %v", seen)
		}
	})
	t.Run("losing the API server keeps the datapath", func(t *testing.T) {
		k.api.Stop(t)
		time.Sleep(500 * time.Millisecond)
		if seen := k.answers(t, "tcp", "80", 5); seen["pod1"]+seen["pod2"] != 5 {
			t.Fatalf("answers %v", seen)
		}
	})
}
