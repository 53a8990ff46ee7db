// Command sriov-dp is a minimal SR-IOV device plugin for the real-cluster
// tests: it advertises a node's netdev VFs to the kubelet as one extended
// resource (e.g. warpnet.io/sriov_vf), with each VF's PCI address as the
// device ID, as the SR-IOV network device plugin
// (k8snetworkplumbingwg/sriov-network-device-plugin) does. The kubelet then
// allocates VFs to pods that request the resource, and Multus reads the
// allocation (the kubelet's pod-resources API, or its checkpoint) and hands
// the PCI address to the delegate (warp-sriov) as "deviceID".
//
// It exists because the SR-IOV network device plugin cannot be built here:
// the Go module proxy refuses every version of it. It runs in the test app
// image as a DaemonSet with the kubelet's device-plugin directory and the
// node's (simulated) sysfs mounted:
//
//	sriov-dp --sysfs-root DIR --resource NAME [--pf NAME]...
//
// VFs are found as the real plugin finds them: PFs are the PCI functions
// with sriov_numvfs, VFs their virtfnN links; VFs bound to vfio-pci (no
// netdev) are left out. Device health is not watched: every VF is Healthy.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	dp "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

type pfList []string

func (p *pfList) String() string     { return strings.Join(*p, ",") }
func (p *pfList) Set(v string) error { *p = append(*p, v); return nil }

func main() {
	root := flag.String("sysfs-root", "/", "directory holding sys/ (the node's sysfs, or a simulator's tree)")
	resource := flag.String("resource", "warpnet.io/sriov_vf", "the extended resource the VFs are advertised as")
	dir := flag.String("device-plugin-dir", dp.DevicePluginPath, "the kubelet's device-plugin directory (its kubelet.sock)")
	var pfs pfList
	flag.Var(&pfs, "pf", "only VFs of the PF with this netdev name (repeatable; default: every PF)")
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "Usage: sriov-dp [flags]\n\nAdvertises the node's SR-IOV VFs (PCI addresses) to the kubelet as an extended resource.\n\nFlags:\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if err := run(*root, *resource, *dir, pfs); err != nil {
		fmt.Fprintln(os.Stderr, "sriov-dp:", err)
		os.Exit(1)
	}
}

func run(root, resource, dir string, pfs []string) error {
	vfs, err := discover(root, pfs)
	if err != nil {
		return err
	}
	if len(vfs) == 0 {
		return fmt.Errorf("no netdev VFs under %s (--pf %v)", filepath.Join(root, "sys/bus/pci/devices"), pfs)
	}
	fmt.Printf("sriov-dp: %s: %d VFs: %s\n", resource, len(vfs), strings.Join(vfs, " "))
	endpoint := "warpnet-sriov-dp-" + strings.NewReplacer("/", "_", ".", "_").Replace(resource) + ".sock"
	sock := filepath.Join(dir, endpoint)
	_ = os.Remove(sock)
	l, err := net.Listen("unix", sock)
	if err != nil {
		return err
	}
	srv := grpc.NewServer()
	dp.RegisterDevicePluginServer(srv, &plugin{resource: resource, vfs: vfs})
	go func() { _ = srv.Serve(l) }()
	defer srv.Stop()
	if err := register(filepath.Join(dir, "kubelet.sock"), endpoint, resource); err != nil {
		return err
	}
	fmt.Printf("sriov-dp: registered %s with the kubelet (endpoint %s)\n", resource, endpoint)
	// The kubelet removes every plugin socket when it restarts: register
	// again once ours is gone.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	for {
		select {
		case <-sig:
			return nil
		case <-time.After(2 * time.Second):
		}
		if _, err := os.Stat(sock); errors.Is(err, os.ErrNotExist) {
			return errors.New("the kubelet removed our socket (it restarted): exiting to be restarted")
		}
	}
}

// discover lists the PCI addresses of netdev VFs under root.
func discover(root string, pfs []string) ([]string, error) {
	devices := filepath.Join(root, "sys/bus/pci/devices")
	ents, err := os.ReadDir(devices)
	if err != nil {
		return nil, err
	}
	var vfs []string
	for _, e := range ents {
		pf := filepath.Join(devices, e.Name())
		if _, err := os.Stat(filepath.Join(pf, "sriov_numvfs")); err != nil {
			continue // not a PF
		}
		if len(pfs) > 0 && !slices.ContainsFunc(pfs, func(n string) bool {
			_, err := os.Stat(filepath.Join(pf, "net", n))
			return err == nil
		}) {
			continue
		}
		links, _ := filepath.Glob(filepath.Join(pf, "virtfn*"))
		for _, l := range links {
			target, err := os.Readlink(l)
			if err != nil {
				return nil, err
			}
			vf := filepath.Base(target)
			drv, _ := os.Readlink(filepath.Join(devices, vf, "driver"))
			if filepath.Base(drv) == "vfio-pci" {
				continue
			}
			vfs = append(vfs, vf)
		}
	}
	slices.Sort(vfs)
	return vfs, nil
}

func register(kubelet, endpoint, resource string) error {
	conn, err := grpc.NewClient("unix://"+kubelet, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err = dp.NewRegistrationClient(conn).Register(ctx, &dp.RegisterRequest{Version: dp.Version, Endpoint: endpoint, ResourceName: resource})
	if err != nil {
		return fmt.Errorf("register with the kubelet (%s): %w", kubelet, err)
	}
	return nil
}

type plugin struct {
	dp.UnimplementedDevicePluginServer
	resource string
	vfs      []string
}

func (p *plugin) GetDevicePluginOptions(context.Context, *dp.Empty) (*dp.DevicePluginOptions, error) {
	return &dp.DevicePluginOptions{}, nil
}

func (p *plugin) ListAndWatch(_ *dp.Empty, s grpc.ServerStreamingServer[dp.ListAndWatchResponse]) error {
	var devs []*dp.Device
	for _, vf := range p.vfs {
		devs = append(devs, &dp.Device{ID: vf, Health: dp.Healthy})
	}
	if err := s.Send(&dp.ListAndWatchResponse{Devices: devs}); err != nil {
		return err
	}
	<-s.Context().Done()
	return nil
}

// Allocate tells the container its VFs as the SR-IOV device plugin does:
// PCIDEVICE_<RESOURCE>=<pci>[,<pci>...].
func (p *plugin) Allocate(_ context.Context, req *dp.AllocateRequest) (*dp.AllocateResponse, error) {
	env := "PCIDEVICE_" + strings.ToUpper(strings.NewReplacer("/", "_", ".", "_").Replace(p.resource))
	resp := &dp.AllocateResponse{}
	for _, c := range req.ContainerRequests {
		for _, id := range c.DevicesIds {
			if !slices.Contains(p.vfs, id) {
				return nil, fmt.Errorf("unknown device %s", id)
			}
		}
		resp.ContainerResponses = append(resp.ContainerResponses, &dp.ContainerAllocateResponse{
			Envs: map[string]string{env: strings.Join(c.DevicesIds, ",")},
		})
	}
	return resp, nil
}

func (p *plugin) PreStartContainer(context.Context, *dp.PreStartContainerRequest) (*dp.PreStartContainerResponse, error) {
	return &dp.PreStartContainerResponse{}, nil
}

func (p *plugin) GetPreferredAllocation(context.Context, *dp.PreferredAllocationRequest) (*dp.PreferredAllocationResponse, error) {
	return &dp.PreferredAllocationResponse{}, nil
}
