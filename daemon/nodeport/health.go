package nodeport

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/warpnet/warpnet/daemon/services"
)

// health is what the healthCheckNodePort of one service answers.
type health struct {
	namespace, name string
	local           int // local endpoints
}

// healthOf collects the health check ports of the entries: the services
// with externalTrafficPolicy: Local and a healthCheckNodePort. The local
// endpoint count is the largest of the service's ports and families (the
// backends of a Local service are this node's only).
func healthOf(entries []services.Entry) map[uint16]health {
	out := map[uint16]health{}
	for _, e := range entries {
		x := e.External
		if x == nil || x.HealthCheckNodePort == 0 {
			continue
		}
		svc, _, _ := strings.Cut(e.Name, ":")
		ns, name, _ := strings.Cut(svc, "/")
		h := out[x.HealthCheckNodePort]
		h.namespace, h.name = ns, name
		h.local = max(h.local, len(e.Backends))
		out[x.HealthCheckNodePort] = h
	}
	return out
}

// healthServers serve the health check ports, one HTTP server per port,
// answering like kube-proxy's: 200 with the local endpoint count, 503
// when there is none, so external load balancers send traffic only to
// nodes with a local backend.
type healthServers struct {
	addrs []netip.Addr
	log   *slog.Logger

	mu     sync.Mutex
	ports  map[uint16]*healthServer
	failed map[uint16]health // wanted, but the server did not start: retried by every apply
}

type healthServer struct {
	srvs []*http.Server
	mu   sync.Mutex
	h    health
}

func newHealthServers(addrs []netip.Addr, log *slog.Logger) *healthServers {
	return &healthServers{addrs: addrs, log: log, ports: map[uint16]*healthServer{}, failed: map[uint16]health{}}
}

// sync serves exactly the ports of want: it starts servers for new ports,
// updates the answers and stops the servers of ports no longer wanted.
func (s *healthServers) sync(want map[uint16]health) error {
	s.mu.Lock()
	ports := map[uint16]bool{}
	for port := range s.ports {
		ports[port] = true
	}
	for port := range s.failed { // a port that could not be opened, perhaps no longer wanted
		ports[port] = true
	}
	s.mu.Unlock()
	for port := range want {
		ports[port] = true
	}
	return s.apply(ports, want)
}

// apply brings the given ports (only those) to want: a port in want is
// served with its answer, one absent from want is stopped.
func (s *healthServers) apply(ports map[uint16]bool, want map[uint16]health) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.failed) > 0 {
		ports, want = cloneOrNew(ports), cloneOrNew(want)
		for port, h := range s.failed {
			if !ports[port] {
				ports[port], want[port] = true, h
			}
		}
	}
	var errs []error
	for port := range ports {
		h, ok := want[port]
		delete(s.failed, port)
		if !ok {
			if hs := s.ports[port]; hs != nil {
				hs.stop()
				delete(s.ports, port)
			}
			continue
		}
		hs := s.ports[port]
		if hs == nil {
			var err error
			if hs, err = s.start(port); err != nil {
				errs = append(errs, err)
				s.failed[port] = h
				continue
			}
			s.ports[port] = hs
		}
		hs.mu.Lock()
		hs.h = h
		hs.mu.Unlock()
	}
	return errors.Join(errs...)
}

// cloneOrNew is a copy of m that can be written (maps.Clone(nil) is nil).
func cloneOrNew[K comparable, V any](m map[K]V) map[K]V {
	out := make(map[K]V, len(m))
	maps.Copy(out, m)
	return out
}

func (s *healthServers) start(port uint16) (*healthServer, error) {
	hs := &healthServer{}
	addrs := []string{":" + strconv.Itoa(int(port))}
	if len(s.addrs) > 0 {
		addrs = nil
		for _, a := range s.addrs {
			addrs = append(addrs, netip.AddrPortFrom(a, port).String())
		}
	}
	for _, a := range addrs {
		ln, err := net.Listen("tcp", a)
		if err != nil {
			hs.stop()
			return nil, fmt.Errorf("nodeport: healthCheckNodePort %d: %w", port, err)
		}
		srv := &http.Server{Handler: hs, ReadHeaderTimeout: 10 * time.Second}
		hs.srvs = append(hs.srvs, srv)
		go func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				s.log.Error("health check server stopped", "addr", a, "err", err)
			}
		}()
	}
	return hs, nil
}

// ServeHTTP answers as kube-proxy's service health server does.
func (hs *healthServer) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	hs.mu.Lock()
	h := hs.h
	hs.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if h.local > 0 {
		w.WriteHeader(http.StatusOK)
	} else {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	fmt.Fprintf(w, "{\n\t\"service\": {\n\t\t\"namespace\": %q,\n\t\t\"name\": %q\n\t},\n\t\"localEndpoints\": %d,\n\t\"serviceProxyHealthy\": true\n}",
		h.namespace, h.name, h.local)
}

func (hs *healthServer) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	for _, srv := range hs.srvs {
		if srv.Shutdown(ctx) != nil {
			srv.Close()
		}
	}
}

func (s *healthServers) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for port, hs := range s.ports {
		hs.stop()
		delete(s.ports, port)
	}
}

// HealthPorts lists the health check ports being served (for status).
func (r *Reconciler) HealthPorts() []uint16 {
	r.health.mu.Lock()
	defer r.health.mu.Unlock()
	var out []uint16
	for p := range r.health.ports {
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}
