module github.com/warpnet/warpnet

go 1.26.8

require (
	github.com/cilium/ebpf v0.22.0
	github.com/containernetworking/cni v1.3.0
	github.com/containernetworking/plugins v1.9.1
	github.com/k8snetworkplumbingwg/sriovnet v1.2.0
	github.com/vishvananda/netlink v1.3.1
	github.com/vishvananda/netns v0.0.5
	golang.org/x/sys v0.49.0
)

require (
	github.com/google/uuid v1.1.2 // indirect
	github.com/spf13/afero v1.9.4 // indirect
	golang.org/x/text v0.28.0 // indirect
)

tool github.com/cilium/ebpf/cmd/bpf2go
