package servicelb

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/warpnet/warpnet/bpf/pinset"
	"github.com/warpnet/warpnet/internal/l4"
	"github.com/warpnet/warpnet/tests/harness"
)

// BenchmarkLBConnect measures what the load balancer's programs cost per
// TCP connect, from the kernel's own BPF run-time statistics (run_cnt,
// run_time_ns; enabled through a BPF_ENABLE_STATS descriptor for the
// benchmark's lifetime only): b.N connects from a client in the LB's
// cgroup, in a namespace of its own, to
//
//	miss       a listener on 127.0.0.1 (no service: lookups only)
//	clusterip  a ClusterIP whose one backend is that listener
//
// An empty cgroup/connect4 program attached beside the LB gives the floor:
// what a program run costs with nothing in it (the dispatch and the stats'
// own clock reads, which a VM may make dear). Reported per connect:
// ns/run of every LB program that ran, and of the empty one. Not counted:
// work the kernel does outside any program, such as freeing a socket's
// lb_sock storage when the socket goes. Run it as
//
//	go test -run '^$' -bench LBConnect -benchtime 20000x -count 3 ./bpf/servicelb/
//
// WARP_LB_BENCH_OBJ=<ELF> attaches that object's lb_connect4 (on the LB's
// maps) instead of the LB's own programs: a quick way to price a change to
// sock_lb.c without regenerating anything.
func BenchmarkLBConnect(b *testing.B) {
	e := harness.New(b)
	n := e.NetNS("bench")
	cg := e.Cgroup("bench")
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		b.Fatalf("enable BPF run-time stats: %v", err)
	}
	b.Cleanup(func() { stats.Close() })

	// The backend: accepts and closes.
	var ln net.Listener
	if err := n.Do(func() (err error) { ln, err = net.Listen("tcp4", "127.0.0.1:0"); return err }); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port

	l, err := Open(e.BPFFS()+"/warpnet", Sizes{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { l.Close() })
	svc := Service{Frontend: Frontend{Addr: svcIP4, Port: svcPort, Proto: l4.TCP}, ID: 1,
		Backends: []Backend{{netip.MustParseAddr("127.0.0.1"), uint16(port)}}}
	if err := l.Upsert(svc); err != nil {
		b.Fatal(err)
	}

	progs := map[string]*ebpf.Program{"empty": attachEmpty(b, cg.Path)}
	if obj := os.Getenv("WARP_LB_BENCH_OBJ"); obj != "" {
		progs["lb_connect4@"+filepath.Base(obj)] = attachFromObject(b, l, obj, cg.Path)
	} else {
		if err := l.Attach(cg.Path); err != nil {
			b.Fatal(err)
		}
		maps.Copy(progs, lbProgs(l))
	}
	client := startLBClient(b, cg, n)

	for _, tc := range []struct {
		name string
		addr netip.Addr
		port int
	}{
		{"miss", netip.MustParseAddr("127.0.0.1"), port},
		{"clusterip", svcIP4, svcPort},
	} {
		b.Run(tc.name, func(b *testing.B) {
			client.t = b
			before := runStats(b, progs)
			r := client.do(lbReq{Op: "connect-loop", Family: 4, Addr: tc.addr.String(), Port: tc.port, Count: b.N})
			after := runStats(b, progs)
			if r.Err != "" || r.OK != b.N {
				b.Fatalf("%d connects to %s:%d: %d ok, %d failed %v %s", b.N, tc.addr, tc.port, r.OK, r.Failed, r.Errors, r.Err)
			}
			for _, name := range slices.Sorted(maps.Keys(progs)) {
				cnt, ns := after[name][0]-before[name][0], after[name][1]-before[name][1]
				if name == "empty" && cnt < uint64(b.N) {
					b.Fatalf("the empty connect4 program ran %d times for %d connects", cnt, b.N)
				}
				if cnt == 0 {
					continue
				}
				b.ReportMetric(float64(ns)/float64(cnt), name+"-ns/run")
				b.ReportMetric(float64(cnt)/float64(b.N), name+"-runs/op")
			}
		})
	}
}

// lbProgs are the LB's programs (the attached ones: l is not staged), by name.
func lbProgs(l *LB) map[string]*ebpf.Program { return pinset.Programs(&l.objs.lbPrograms) }

// runStats reads each program's run count and total run time.
func runStats(b *testing.B, progs map[string]*ebpf.Program) map[string][2]uint64 {
	out := map[string][2]uint64{}
	for name, p := range progs {
		st, err := p.Stats()
		if err != nil {
			b.Fatalf("%s: %v", name, err)
		}
		out[name] = [2]uint64{st.RunCount, uint64(st.Runtime)}
	}
	return out
}

// attachEmpty attaches a connect4 program that only lets the connect
// proceed: the floor of a program run.
func attachEmpty(b *testing.B, cgroup string) *ebpf.Program {
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:         ebpf.CGroupSockAddr,
		AttachType:   ebpf.AttachCGroupInet4Connect,
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 1), asm.Return()},
		License:      "GPL",
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { p.Close() })
	lk, err := link.AttachCgroup(link.CgroupOptions{Path: cgroup, Attach: ebpf.AttachCGroupInet4Connect, Program: p})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { lk.Close() })
	return p
}

// attachFromObject loads lb_connect4 of the ELF at path on l's maps and
// attaches it to cgroup.
func attachFromObject(b *testing.B, l *LB, path, cgroup string) *ebpf.Program {
	spec, err := ebpf.LoadCollectionSpec(path)
	if err != nil {
		b.Fatal(err)
	}
	ours := pinset.Maps(&l.objs.lbMaps)
	repl := map[string]*ebpf.Map{}
	for name, ms := range spec.Maps {
		ms.Pinning = ebpf.PinNone // maps of its own (a variant's) are the benchmark's
		if m, ok := ours[name]; ok {
			ms.MaxEntries = m.MaxEntries()
			repl[name] = m
		}
	}
	var objs struct {
		Prog *ebpf.Program `ebpf:"lb_connect4"`
	}
	if err := spec.LoadAndAssign(&objs, &ebpf.CollectionOptions{MapReplacements: repl}); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			b.Fatalf("%+v", ve)
		}
		b.Fatal(fmt.Errorf("%s: %w", path, err))
	}
	b.Cleanup(func() { objs.Prog.Close() })
	lk, err := link.AttachCgroup(link.CgroupOptions{Path: cgroup, Attach: ebpf.AttachCGroupInet4Connect, Program: objs.Prog})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { lk.Close() })
	return objs.Prog
}
