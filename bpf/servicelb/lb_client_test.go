package servicelb

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"

	"github.com/warpnet/warpnet/tests/harness"
)

// cgroup sock_addr programs act on sockets created by tasks in the cgroup
// they are attached to, and the test binary itself must not be in a test
// cgroup (nor is the machine's cgroup to be touched). So the clients of
// these tests are child processes: the test binary re-executed with
// helperEnv=lbclient (see TestMain), born inside the test's cgroup
// (clone3 CLONE_INTO_CGROUP through SysProcAttr.UseCgroupFD). A client
// creates its sockets inside a pod (or node) network namespace, on a thread
// that entered it (ns.Do), and takes requests as JSON lines on stdin,
// answering each with a JSON line on stdout. All operations use raw
// syscalls, so that the socket family (AF_INET6 with IPv4-mapped
// addresses) and errno values are exactly what the test asks for.

const lbClientNetNSEnv = "WARP_LB_CLIENT_NETNS"

type lbReq struct {
	Op       string        `json:"op"`
	Family   int           `json:"family,omitempty"` // 4 or 6: the socket's family
	Addr     string        `json:"addr,omitempty"`
	Port     int           `json:"port,omitempty"`
	Msg      string        `json:"msg,omitempty"`
	Count    int           `json:"count,omitempty"`
	Duration time.Duration `json:"duration,omitempty"`
	Parallel int           `json:"parallel,omitempty"`
	Name     string        `json:"name,omitempty"`
	Timeout  time.Duration `json:"timeout,omitempty"`
}

type lbResp struct {
	Err     string         `json:"err,omitempty"`
	Errno   string         `json:"errno,omitempty"`
	Elapsed time.Duration  `json:"elapsed,omitempty"`
	Server  string         `json:"server,omitempty"`  // which echo server answered
	Peer    string         `json:"peer,omitempty"`    // getpeername
	Cookie  uint64         `json:"cookie,omitempty"`  // SO_COOKIE
	Servers []string       `json:"servers,omitempty"` // udp-unconn: per datagram
	From    []string       `json:"from,omitempty"`    // udp-unconn: reply sources
	OK      int            `json:"ok,omitempty"`      // tcp-loop
	Failed  int            `json:"failed,omitempty"`  // tcp-loop
	Errors  []string       `json:"errors,omitempty"`  // tcp-loop: the first few
	Hist    map[string]int `json:"hist,omitempty"`    // tcp-loop: answers per server
	// tcp-loop: when the first and the last successful exchange began
	First, Last time.Time `json:",omitzero"`
	// udp-io
	WriteErr string `json:"write_err,omitempty"`
	ReadErr  string `json:"read_err,omitempty"`
}

// --- the child ---

func lbClientMain() int {
	netns, err := ns.GetNS(os.Getenv(lbClientNetNSEnv))
	if err != nil {
		fmt.Println(`{"err":"netns: ` + strings.ReplaceAll(err.Error(), `"`, `'`) + `"}`)
		return 1
	}
	c := &lbChild{netns: netns, socks: map[string]int{}}
	in := bufio.NewScanner(os.Stdin)
	out := json.NewEncoder(os.Stdout)
	for in.Scan() {
		var req lbReq
		if err := json.Unmarshal(in.Bytes(), &req); err != nil {
			_ = out.Encode(lbResp{Err: err.Error()})
			continue
		}
		if req.Timeout == 0 {
			req.Timeout = 3 * time.Second
		}
		_ = out.Encode(c.do(req))
	}
	return 0
}

type lbChild struct {
	netns ns.NetNS
	mu    sync.Mutex
	socks map[string]int
}

// socket creates a socket in the client's network namespace.
func (c *lbChild) socket(family, typ int) (int, error) { return c.socketProto(family, typ, 0) }

func (c *lbChild) socketProto(family, typ, proto int) (int, error) {
	domain := unix.AF_INET
	if family == 6 {
		domain = unix.AF_INET6
	}
	var fd int
	err := c.netns.Do(func(ns.NetNS) (err error) {
		fd, err = unix.Socket(domain, typ|unix.SOCK_CLOEXEC, proto)
		return err
	})
	return fd, err
}

func sockaddr(req lbReq) (unix.Sockaddr, error) {
	a, err := netip.ParseAddr(req.Addr)
	if err != nil {
		return nil, err
	}
	if req.Family == 6 {
		return &unix.SockaddrInet6{Port: req.Port, Addr: a.As16()}, nil
	}
	if !a.Is4() {
		return nil, fmt.Errorf("%s is not IPv4", a)
	}
	return &unix.SockaddrInet4{Port: req.Port, Addr: a.As4()}, nil
}

func sockaddrString(sa unix.Sockaddr) string {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port)).String()
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port)).String()
	}
	return fmt.Sprintf("%v", sa)
}

func setErr(r *lbResp, what string, err error) lbResp {
	r.Err = what + ": " + err.Error()
	var errno unix.Errno
	if errors.As(err, &errno) {
		r.Errno = unix.ErrnoName(errno)
	}
	return *r
}

func setTimeouts(fd int, d time.Duration) {
	tv := unix.NsecToTimeval(d.Nanoseconds())
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
}

// The Go runtime's signals (the client runs with async preemption off, but
// still) interrupt blocking socket calls that have a timeout: they fail
// with EINTR instead of restarting (signal(7)). These wrappers retry.

func sysWrite(fd int, b []byte) (int, error) {
	for {
		n, err := unix.Write(fd, b)
		if err != unix.EINTR {
			return n, err
		}
	}
}

func sysRead(fd int, b []byte) (int, error) {
	for {
		n, err := unix.Read(fd, b)
		if err != unix.EINTR {
			return n, err
		}
	}
}

func sysSendto(fd int, b []byte, sa unix.Sockaddr) error {
	for {
		if err := unix.Sendto(fd, b, 0, sa); err != unix.EINTR {
			return err
		}
	}
}

func sysRecvfrom(fd int, b []byte) (int, unix.Sockaddr, error) {
	for {
		n, from, err := unix.Recvfrom(fd, b, 0)
		if err != unix.EINTR {
			return n, from, err
		}
	}
}

// sysConnect connects a blocking socket. An interrupted connect() goes on
// in the background: wait for it and fetch its result.
func sysConnect(fd int, sa unix.Sockaddr, timeout time.Duration) error {
	err := unix.Connect(fd, sa)
	if err != unix.EINTR {
		return err
	}
	deadline := time.Now().Add(timeout)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return unix.ETIMEDOUT
		}
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
		n, err := unix.Poll(pfd, int(left.Milliseconds())+1)
		if err == unix.EINTR || (err == nil && n == 0) {
			continue
		}
		if err != nil {
			return err
		}
		soErr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
		if err != nil {
			return err
		}
		if soErr != 0 {
			return unix.Errno(soErr)
		}
		return nil
	}
}

// exchange writes msg on a connected socket and reads the echo server's
// "<server>:<msg>" answer.
func exchange(fd int, msg string) (string, error) {
	if _, err := sysWrite(fd, []byte(msg)); err != nil {
		return "", fmt.Errorf("write: %w", err)
	}
	buf := make([]byte, 4096)
	n, err := sysRead(fd, buf)
	if err != nil {
		return "", fmt.Errorf("read: %w", err)
	}
	server, echoed, ok := strings.Cut(string(buf[:n]), ":")
	if !ok || echoed != msg {
		return "", fmt.Errorf("reply %q is no echo of %q", buf[:n], msg)
	}
	return server, nil
}

// connect opens a socket of typ, connects it and fills Peer, Cookie and
// Elapsed (of connect()).
func (c *lbChild) connect(req lbReq, typ int, r *lbResp) (int, error) {
	sa, err := sockaddr(req)
	if err != nil {
		return -1, err
	}
	fd, err := c.socket(req.Family, typ)
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	setTimeouts(fd, req.Timeout)
	start := time.Now()
	err = sysConnect(fd, sa, req.Timeout)
	r.Elapsed = time.Since(start)
	if err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("connect: %w", err)
	}
	if peer, err := unix.Getpeername(fd); err == nil {
		r.Peer = sockaddrString(peer)
	}
	r.Cookie, _ = unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_COOKIE)
	return fd, nil
}

func (c *lbChild) do(req lbReq) lbResp {
	var r lbResp
	switch req.Op {
	case "tcp", "udp-conn":
		typ := unix.SOCK_STREAM
		if req.Op == "udp-conn" {
			typ = unix.SOCK_DGRAM
		}
		fd, err := c.connect(req, typ, &r)
		if err != nil {
			return setErr(&r, "", err)
		}
		defer unix.Close(fd)
		if r.Server, err = exchange(fd, req.Msg); err != nil {
			return setErr(&r, "", err)
		}
	case "icmp-conn": // a connected ping socket: not TCP or UDP
		sa, err := sockaddr(req)
		if err != nil {
			return setErr(&r, "", err)
		}
		fd, err := c.socketProto(req.Family, unix.SOCK_DGRAM, unix.IPPROTO_ICMP)
		if err != nil {
			return setErr(&r, "socket", err)
		}
		defer unix.Close(fd)
		if err := sysConnect(fd, sa, req.Timeout); err != nil {
			return setErr(&r, "connect", err)
		}
		if peer, err := unix.Getpeername(fd); err == nil {
			r.Peer = sockaddrString(peer)
		}
	case "tcp-twice": // connect, connect again (EISCONN), then getpeername and exchange
		fd, err := c.connect(req, unix.SOCK_STREAM, &r)
		if err != nil {
			return setErr(&r, "", err)
		}
		defer unix.Close(fd)
		sa, _ := sockaddr(req)
		if err := sysConnect(fd, sa, req.Timeout); err != unix.EISCONN {
			r.Err = fmt.Sprintf("second connect: %v, want EISCONN", err)
			return r
		}
		if peer, err := unix.Getpeername(fd); err == nil {
			r.Peer = sockaddrString(peer)
		}
		if r.Server, err = exchange(fd, req.Msg); err != nil {
			return setErr(&r, "", err)
		}
	case "udp-open", "tcp-open": // a connected socket kept for udp-io and close
		typ := unix.SOCK_DGRAM
		if req.Op == "tcp-open" {
			typ = unix.SOCK_STREAM
		}
		fd, err := c.connect(req, typ, &r)
		if err != nil {
			return setErr(&r, "", err)
		}
		if r.Server, err = exchange(fd, req.Msg); err != nil {
			unix.Close(fd)
			return setErr(&r, "", err)
		}
		c.mu.Lock()
		c.socks[req.Name] = fd
		c.mu.Unlock()
	case "udp-io":
		c.mu.Lock()
		fd, ok := c.socks[req.Name]
		c.mu.Unlock()
		if !ok {
			r.Err = "no socket " + req.Name
			return r
		}
		if _, err := sysWrite(fd, []byte(req.Msg)); err != nil {
			r.WriteErr = unix.ErrnoName(errnoOf(err))
		}
		buf := make([]byte, 4096)
		n, err := sysRead(fd, buf)
		if err != nil {
			r.ReadErr = unix.ErrnoName(errnoOf(err))
		} else {
			r.Server, _, _ = strings.Cut(string(buf[:n]), ":")
		}
	case "close":
		c.mu.Lock()
		fd, ok := c.socks[req.Name]
		delete(c.socks, req.Name)
		c.mu.Unlock()
		if ok {
			unix.Close(fd)
		}
	case "udp-unconn": // Count datagrams on one unconnected socket (kept if named)
		sa, err := sockaddr(req)
		if err != nil {
			return setErr(&r, "", err)
		}
		c.mu.Lock()
		fd, ok := c.socks[req.Name]
		c.mu.Unlock()
		if !ok || req.Name == "" {
			if fd, err = c.socket(req.Family, unix.SOCK_DGRAM); err != nil {
				return setErr(&r, "socket", err)
			}
			if req.Name == "" {
				defer unix.Close(fd)
			} else {
				c.mu.Lock()
				c.socks[req.Name] = fd
				c.mu.Unlock()
			}
		}
		setTimeouts(fd, req.Timeout)
		r.Cookie, _ = unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_COOKIE)
		buf := make([]byte, 4096)
		for i := range max(req.Count, 1) {
			msg := fmt.Sprintf("%s-%d", req.Msg, i)
			start := time.Now()
			err := sysSendto(fd, []byte(msg), sa)
			r.Elapsed = time.Since(start)
			if err != nil {
				return setErr(&r, "sendto", err)
			}
			n, from, err := sysRecvfrom(fd, buf)
			if err != nil {
				return setErr(&r, "recvfrom", err)
			}
			server, echoed, _ := strings.Cut(string(buf[:n]), ":")
			if echoed != msg {
				r.Err = fmt.Sprintf("reply %q is no echo of %q", buf[:n], msg)
				return r
			}
			r.Servers = append(r.Servers, server)
			r.From = append(r.From, sockaddrString(from))
		}
	case "tcp-loop": // TCP exchanges until Count or Duration, Parallel workers
		r.Hist = map[string]int{}
		var mu sync.Mutex
		var wg sync.WaitGroup
		deadline := time.Now().Add(req.Duration)
		left := req.Count
		for range max(req.Parallel, 1) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					mu.Lock()
					if left <= 0 || time.Now().After(deadline) {
						mu.Unlock()
						return
					}
					left--
					mu.Unlock()
					var one lbResp
					began := time.Now()
					fd, err := c.connect(req, unix.SOCK_STREAM, &one)
					server := ""
					if err == nil {
						server, err = exchange(fd, req.Msg)
						unix.Close(fd)
					}
					mu.Lock()
					if err != nil {
						r.Failed++
						if len(r.Errors) < 5 {
							r.Errors = append(r.Errors, err.Error())
						}
					} else {
						r.OK++
						r.Hist[server]++
						if r.First.IsZero() || began.Before(r.First) {
							r.First = began
						}
						if began.After(r.Last) {
							r.Last = began
						}
					}
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
	case "connect-loop": // Count TCP connects, each closed at once (RST: no TIME_WAIT)
		sa, err := sockaddr(req)
		if err != nil {
			return setErr(&r, "", err)
		}
		start := time.Now()
		for range req.Count {
			fd, err := c.socket(req.Family, unix.SOCK_STREAM)
			if err == nil {
				_ = unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1})
				err = sysConnect(fd, sa, req.Timeout)
				unix.Close(fd)
			}
			if err != nil {
				r.Failed++
				if len(r.Errors) < 5 {
					r.Errors = append(r.Errors, err.Error())
				}
				continue
			}
			r.OK++
		}
		r.Elapsed = time.Since(start)
	default:
		r.Err = "unknown op " + req.Op
	}
	return r
}

func errnoOf(err error) unix.Errno {
	var errno unix.Errno
	errors.As(err, &errno)
	return errno
}

// --- the test side ---

// lbClient is a running client process in a cgroup and network namespace.
type lbClient struct {
	t    testing.TB
	name string
	cmd  *exec.Cmd
	in   io.WriteCloser
	out  chan string
	mu   sync.Mutex
}

// startLBClient starts a client born in cgroup cg that creates its sockets
// in the network namespace n.
func startLBClient(t testing.TB, cg *harness.Cgroup, n *harness.NetNS) *lbClient {
	t.Helper()
	dir, err := os.Open(cg.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer dir.Close()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=lbclient", lbClientNetNSEnv+"="+n.Path, "GODEBUG=asyncpreemptoff=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{
		UseCgroupFD: true,
		CgroupFD:    int(dir.Fd()),
		Pdeathsig:   syscall.SIGKILL,
	}
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr := &harness.OutputBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start client: %v", err)
	}
	c := &lbClient{t: t, name: n.Name, cmd: cmd, in: in, out: make(chan string, 16)}
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			c.out <- sc.Text()
		}
		close(c.out)
	}()
	t.Cleanup(func() {
		in.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() && stderr.Len() > 0 {
			t.Logf("client in %s stderr:\n%s", n.Name, stderr.String())
		}
	})
	// The client must really be in the cgroup, or nothing is translated.
	procs, err := os.ReadFile(cg.Path + "/cgroup.procs")
	if err != nil || !strings.Contains("\n"+string(procs), fmt.Sprintf("\n%d\n", cmd.Process.Pid)) {
		t.Fatalf("client %d not in cgroup %s (%v): %q", cmd.Process.Pid, cg.Path, err, procs)
	}
	return c
}

// do sends one request and waits (bounded) for its answer.
func (c *lbClient) do(req lbReq) lbResp {
	c.t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	line, err := json.Marshal(req)
	if err != nil {
		c.t.Fatal(err)
	}
	if _, err := c.in.Write(append(line, '\n')); err != nil {
		c.t.Fatalf("client %s: %v", c.name, err)
	}
	limit := 30*time.Second + req.Duration
	select {
	case s, ok := <-c.out:
		if !ok {
			c.t.Fatalf("client %s exited", c.name)
		}
		var r lbResp
		if err := json.Unmarshal([]byte(s), &r); err != nil {
			c.t.Fatalf("client %s: %v: %q", c.name, err, s)
		}
		return r
	case <-time.After(limit):
		c.t.Fatalf("client %s: no answer to %+v within %v", c.name, req, limit)
	}
	return lbResp{}
}

// must is do that fails the test on an error and returns the answer.
func (c *lbClient) must(req lbReq) lbResp {
	c.t.Helper()
	r := c.do(req)
	if r.Err != "" {
		c.t.Fatalf("%s %s [%s]:%d from %s: %s", req.Op, familyStr(req.Family), req.Addr, req.Port, c.name, r.Err)
	}
	return r
}

func familyStr(f int) string {
	if f == 6 {
		return "AF_INET6"
	}
	return "AF_INET"
}
