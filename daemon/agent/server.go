package agent

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"sort"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/warpnet/warpnet/daemon/status"
	"github.com/warpnet/warpnet/internal/buildinfo"
)

// serve starts warpd's one HTTP server: /healthz, /metrics (Prometheus),
// /status (JSON, for warpctl warpd status) and, with Config.Pprof,
// /debug/pprof/. It then checks, in the
// background, that the listener can be reached, and says so in the log
// when it cannot (say, the loopback interface is down): a listener can be
// bound to an address no one can connect to.
func (a *Agent) serve() (*http.Server, error) {
	ln, err := net.Listen("tcp", a.cfg.ListenAddr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s for /healthz, /metrics and /status (--listen): %w", a.cfg.ListenAddr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if ok, why := a.health(); !ok {
			http.Error(w, why, http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.Handle("/metrics", promhttp.HandlerFor(a.metrics.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc(status.Path, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(a.status())
	})
	if a.cfg.Pprof {
		// Go's profiles (heap, CPU, goroutines), for finding where
		// memory and time go; off by default, as it lets a caller
		// make warpd spend CPU.
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	go a.checkListener(ln.Addr().(*net.TCPAddr))
	return srv, nil
}

// checkListener connects to the listener once and logs an error if that
// fails.
func (a *Agent) checkListener(addr *net.TCPAddr) {
	target := *addr
	switch {
	case addr.IP.Equal(net.IPv4zero):
		target.IP = net.IPv4(127, 0, 0, 1)
	case addr.IP.IsUnspecified():
		target.IP = net.IPv6loopback
	}
	c, err := net.DialTimeout("tcp", target.String(), 5*time.Second)
	if err != nil {
		a.log.Error("the /healthz, /metrics and /status listener cannot be reached: health checks of warpd will fail "+
			"(is the interface of its address down? for 127.0.0.1: ip link set lo up)", "listen", a.cfg.ListenAddr, "err", err)
		return
	}
	c.Close()
	a.log.Info("serving /healthz, /metrics and /status", "listen", addr.String())
}

// health is what /healthz says: healthy once a sync succeeded, as long as
// the source can be followed and the last sync did not fail. Rejected
// objects do not make warpd unhealthy: the rest is served (see /status).
func (a *Agent) health() (bool, string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	switch {
	case a.sourceProblem != nil:
		return false, "services source unusable (the last good state stays in force): " + a.sourceProblem.Error()
	case len(a.short) > 0:
		var parts []string
		for _, s := range a.short {
			parts = append(parts, s.String())
		}
		return false, "the service maps cannot hold the desired state: " + strings.Join(parts, "; ")
	case a.lastSync != nil && a.lastSync.Error != "":
		return false, "the last sync failed in part: " + a.lastSync.Error
	case a.network != nil && a.network.LastSync != nil && a.network.LastSync.Error != "":
		return false, "node networking failed in part: " + a.network.LastSync.Error
	case !a.synced:
		return false, "not synced yet"
	}
	return true, ""
}

// status builds the report served on /status.
func (a *Agent) status() status.Status {
	ok, why := a.health()
	a.mu.Lock()
	defer a.mu.Unlock()
	s := status.Status{
		Version: buildinfo.Version, Node: a.cfg.Node.Name, Source: a.src.String(),
		Healthy: ok, Unhealthy: why, LastGoodSync: a.lastGoodSync,
		Maps: fill(a.inMaps, a.sizes), Rejected: []status.Rejected{},
	}
	if a.sourceProblem != nil {
		s.SourceProblem = a.sourceProblem.Error()
	}
	if a.lastSync != nil {
		last := *a.lastSync
		s.LastSync = &last
	}
	for _, r := range a.rejected {
		s.Rejected = append(s.Rejected, r)
	}
	if a.network != nil {
		n := *a.network
		s.Network = &n
	}
	sort.Slice(s.Rejected, func(i, j int) bool {
		x, y := s.Rejected[i], s.Rejected[j]
		return x.Kind+" "+x.Namespace+"/"+x.Name < y.Kind+" "+y.Namespace+"/"+y.Name
	})
	return s
}
