package apiserver

import (
	"context"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"

	"github.com/warpnet/warpnet/tests/harness"
)

// TestVersionMatchesBuildModule keeps Version in step with the module that
// hack/build-apiserver.sh builds (it derives the binary's name from it).
func TestVersionMatchesBuildModule(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("build", "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^\s*k8s\.io/kubernetes (v\S+)`).FindSubmatch(data)
	if m == nil {
		t.Fatal("build/go.mod does not require k8s.io/kubernetes")
	}
	if got := string(m[1]); got != Version {
		t.Fatalf("build/go.mod requires k8s.io/kubernetes %s, but Version is %s", got, Version)
	}
}

// TestServer creates a Namespace, a ClusterIP Service and an EndpointSlice
// with client-go and reads them back, once through Client and once through
// the kubeconfig file.
func TestServer(t *testing.T) {
	t.Parallel()
	s := Start(t)
	ctx := t.Context()
	c := s.Client(t)

	v, err := c.Discovery().ServerVersion()
	if err != nil {
		t.Fatal(err)
	}
	if v.GitVersion != Version {
		t.Errorf("server version %s, want %s", v.GitVersion, Version)
	}

	const nsName = "warp-test"
	if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{
		ObjectMeta: metav1.ObjectMeta{Name: nsName},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	svc, err := c.CoreV1().Services(nsName).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.ServiceSpec{
			Type:     corev1.ServiceTypeClusterIP,
			Selector: map[string]string{"app": "web"},
			Ports: []corev1.ServicePort{{
				Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: intstr.FromInt32(8080),
			}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ip, err := netip.ParseAddr(svc.Spec.ClusterIP)
	if err != nil || !netip.MustParsePrefix(strings.Split(ServiceCIDR, ",")[0]).Contains(ip) {
		t.Fatalf("ClusterIP %q is not in %s", svc.Spec.ClusterIP, ServiceCIDR)
	}
	t.Logf("service %s/web got ClusterIP %s", nsName, ip)

	_, err = c.DiscoveryV1().EndpointSlices(nsName).Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name:   "web-1",
			Labels: map[string]string{discoveryv1.LabelServiceName: "web"},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"10.244.1.10"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}, NodeName: ptr.To("node1")},
			{Addresses: []string{"10.244.2.10"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}, NodeName: ptr.To("node2")},
		},
		Ports: []discoveryv1.EndpointPort{{Name: ptr.To("http"), Protocol: ptr.To(corev1.ProtocolTCP), Port: ptr.To[int32](8080)}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	// Read back through a second client built from the kubeconfig file, as
	// warpd would.
	cfg, err := clientcmd.BuildConfigFromFlags("", s.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	c2 := kubernetes.NewForConfigOrDie(cfg)
	got, err := c2.CoreV1().Services(nsName).Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.Spec.ClusterIP != svc.Spec.ClusterIP || got.Spec.Ports[0].Port != 80 {
		t.Errorf("read back service %+v", got.Spec)
	}
	slices, err := c2.DiscoveryV1().EndpointSlices(nsName).List(ctx, metav1.ListOptions{
		LabelSelector: discoveryv1.LabelServiceName + "=web",
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(slices.Items) != 1 || len(slices.Items[0].Endpoints) != 2 ||
		slices.Items[0].Endpoints[1].Addresses[0] != "10.244.2.10" || *slices.Items[0].Ports[0].Port != 8080 {
		t.Errorf("read back endpoint slices %+v", slices.Items)
	}

	// A Pod can be created without a ServiceAccount (no controller manager
	// runs, and the ServiceAccount admission plugin is off).
	if _, err := c.CoreV1().Pods(nsName).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web-1", Labels: map[string]string{"app": "web"}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "pause"}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Errorf("create pod: %v", err)
	}

	// Token auth and RBAC: a wrong token is rejected.
	bad := s.RESTConfig()
	bad.BearerToken = "wrong"
	_, err = kubernetes.NewForConfigOrDie(bad).CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if !apierrors.IsUnauthorized(err) {
		t.Errorf("list namespaces with a wrong token: %v, want Unauthorized", err)
	}

	if _, err := exec.LookPath("kubectl"); err == nil {
		out, err := exec.CommandContext(ctx, "kubectl", "--kubeconfig", s.Kubeconfig,
			"get", "service", "-n", nsName, "web", "-o", "jsonpath={.spec.clusterIP}").CombinedOutput()
		if err != nil || string(out) != svc.Spec.ClusterIP {
			t.Errorf("kubectl get service: %q, %v", out, err)
		}
	}

	// Stop ends the server early; a second Stop and the cleanup do nothing.
	s.Stop(t)
	s.Stop(t)
	if _, err := c.CoreV1().Namespaces().Get(ctx, nsName, metav1.GetOptions{}); err == nil {
		t.Error("the server still answers after Stop")
	}
}

// TestBridgeInto reaches the API server from inside a node namespace, which
// has nothing but its own loopback, through BridgeInto.
func TestBridgeInto(t *testing.T) {
	t.Parallel()
	e := harness.New(t) // root; skips (or fails under WARP_E2E_REQUIRED=1) otherwise
	harness.RequireTools(t, "socat")
	node := e.NetNS("node1")
	s := Start(t)
	addr := strings.TrimPrefix(s.URL, "https://")

	// Before the bridge, the port is closed inside the namespace.
	if err := node.Do(func() error {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err
	}); err == nil {
		t.Fatalf("%s is reachable inside netns %s before bridging", addr, node.Name)
	}

	kc := s.BridgeInto(t, node)

	// client-go whose connections are all dialled inside the namespace (a
	// socket keeps the namespace it was created in).
	cfg, err := clientcmd.BuildConfigFromFlags("", kc)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Dial = func(ctx context.Context, network, address string) (net.Conn, error) {
		var conn net.Conn
		err := node.Do(func() error {
			var err error
			conn, err = (&net.Dialer{}).DialContext(ctx, network, address)
			return err
		})
		return conn, err
	}
	c := kubernetes.NewForConfigOrDie(cfg)
	svc, err := c.CoreV1().Services("default").Get(t.Context(), "kubernetes", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get service default/kubernetes from inside netns %s: %v", node.Name, err)
	}
	if svc.Spec.ClusterIP != "10.96.0.1" {
		t.Errorf("default/kubernetes has ClusterIP %s, want 10.96.0.1", svc.Spec.ClusterIP)
	}

	// A process inside the namespace, if kubectl is there.
	if _, err := exec.LookPath("kubectl"); err == nil {
		out := node.Exec(t, "kubectl", "--kubeconfig", kc, "get", "--raw", "/readyz")
		if strings.TrimSpace(out) != "ok" {
			t.Errorf("kubectl get --raw /readyz inside netns %s: %q", node.Name, out)
		}
	}
}
