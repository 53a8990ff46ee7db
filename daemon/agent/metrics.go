package agent

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/warpnet/warpnet/bpf/servicelb"
	"github.com/warpnet/warpnet/daemon/reconcile"
	"github.com/warpnet/warpnet/daemon/status"
)

// metrics are warpd's Prometheus metrics, in one registry served on
// /metrics. Map contents are counted as programmed (reconcile.Stats), so
// they agree with `warpctl lb services`.
type metrics struct {
	reg *prometheus.Registry

	services, backends prometheus.Gauge
	syncs, syncErrors  prometheus.Counter
	syncDuration       prometheus.Histogram
	lastSuccess        prometheus.Gauge
	fill               *prometheus.GaugeVec
	rejected           *prometheus.GaugeVec
	sourceHealthyGauge prometheus.Gauge
	peers              *prometheus.GaugeVec
	networkSyncErrors  prometheus.Counter
	destroyPasses      prometheus.Counter
	destroyedSockets   prometheus.Counter
	mapFull            *prometheus.GaugeVec
	mapCapacity        *prometheus.GaugeVec
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		services: prometheus.NewGauge(prometheus.GaugeOpts{Name: "warpd_services",
			Help: "Frontends (service IP, port, protocol) programmed in the load balancer's maps."}),
		backends: prometheus.NewGauge(prometheus.GaugeOpts{Name: "warpd_backends",
			Help: "Backend entries programmed in the maps, summed over frontends."}),
		syncs: prometheus.NewCounter(prometheus.CounterOpts{Name: "warpd_syncs_total",
			Help: "Syncs of the maps with the services source."}),
		syncErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "warpd_sync_errors_total",
			Help: "Syncs that failed in part (the rest was done)."}),
		syncDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "warpd_sync_duration_seconds",
			Help: "Duration of syncs.", Buckets: prometheus.ExponentialBuckets(0.001, 4, 10)}),
		lastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{Name: "warpd_last_successful_sync_timestamp_seconds",
			Help: "When the last entirely successful sync ended (Unix time)."}),
		fill: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "warpd_map_fill_ratio",
			Help: "Used share of a map's capacity: services (frontends) and backends."}, []string{"map"}),
		rejected: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "warpd_rejected_objects",
			Help: "Objects not applied as written (invalid, or claiming another service's frontend); see warpctl warpd status."}, []string{"kind"}),
		sourceHealthyGauge: prometheus.NewGauge(prometheus.GaugeOpts{Name: "warpd_source_healthy",
			Help: "1 while the services source can be followed, 0 while it cannot (the last good state stays in force)."}),
		peers: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "warpd_node_peers",
			Help: "Other nodes by how their pods are reached: native (routed), tunnel (VXLAN), unreachable (see warpctl warpd status)."}, []string{"path"}),
		networkSyncErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "warpd_node_network_sync_errors_total",
			Help: "Node networking syncs (routes, tunnel, masquerading, node facts) that failed in part."}),
		destroyPasses: prometheus.NewCounter(prometheus.CounterOpts{Name: "warpd_socket_destroy_passes_total",
			Help: "Walks of the node's sockets to destroy those still connected to removed backends (one per sync that removed any)."}),
		destroyedSockets: prometheus.NewCounter(prometheus.CounterOpts{Name: "warpd_destroyed_sockets_total",
			Help: "Sockets destroyed because their backend left its service."}),
		mapFull: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "warpd_map_full",
			Help: "1 while a map cannot hold the desired state (its size is fixed by --map-services/--map-backends, or growing it failed): services that do not fit are not programmed."}, []string{"map"}),
		mapCapacity: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "warpd_map_capacity",
			Help: "Capacity of a map: services (frontends) and backends (backend entries summed over frontends)."}, []string{"map"}),
	}
	m.reg.MustRegister(m.services, m.backends, m.syncs, m.syncErrors, m.syncDuration, m.lastSuccess, m.fill, m.rejected,
		m.sourceHealthyGauge, m.peers, m.networkSyncErrors, m.destroyPasses, m.destroyedSockets, m.mapFull, m.mapCapacity,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.sourceHealthyGauge.Set(1)
	for _, kind := range []string{"Service", "EndpointSlice"} {
		m.rejected.WithLabelValues(kind).Set(0)
	}
	m.mapsShort(nil)
	return m
}

func (m *metrics) synced(st reconcile.Stats, err error, dur time.Duration, sizes servicelb.Sizes) {
	m.syncs.Inc()
	m.syncDuration.Observe(dur.Seconds())
	m.mapCapacity.WithLabelValues("services").Set(float64(sizes.Services))
	m.mapCapacity.WithLabelValues("backends").Set(float64(sizes.Backends))
	if st.Counted {
		m.services.Set(float64(st.Services))
		m.backends.Set(float64(st.Backends))
		for _, f := range fill(st, sizes) {
			m.fill.WithLabelValues(f.Map).Set(f.Ratio)
		}
	}
	if err != nil {
		m.syncErrors.Inc()
		return
	}
	m.lastSuccess.Set(float64(time.Now().UnixNano()) / 1e9)
}

func (m *metrics) rejectedObjects(perKind map[string]int) {
	for kind, n := range perKind {
		m.rejected.WithLabelValues(kind).Set(float64(n))
	}
}

func (m *metrics) sourceHealthy(ok bool) {
	if ok {
		m.sourceHealthyGauge.Set(1)
	} else {
		m.sourceHealthyGauge.Set(0)
	}
}

// fill is the use of the maps' capacities (LBSizes: frontends, and backend
// entries summed over frontends).
func fill(st reconcile.Stats, sizes servicelb.Sizes) []status.MapFill {
	var out []status.MapFill
	for _, m := range []status.MapFill{{Map: "services", Used: st.Services, Capacity: sizes.Services}, {Map: "backends", Used: st.Backends, Capacity: sizes.Backends}} {
		if m.Capacity > 0 {
			m.Ratio = float64(m.Used) / float64(m.Capacity)
			out = append(out, m)
		}
	}
	return out
}

// mapsShort records which maps cannot hold the desired state.
func (m *metrics) mapsShort(short []shortage) {
	full := map[string]float64{"services": 0, "backends": 0}
	for _, s := range short {
		full[s.Map] = 1
	}
	for name, v := range full {
		m.mapFull.WithLabelValues(name).Set(v)
	}
}

// destroyPass records one pass of socket destruction.
func (m *metrics) destroyPass(destroyed map[servicelb.Target]int) {
	m.destroyPasses.Inc()
	for _, n := range destroyed {
		m.destroyedSockets.Add(float64(n))
	}
}

// networkSynced records a node networking sync.
func (m *metrics) networkSynced(peers []status.Peer, err error) {
	count := map[string]float64{"native": 0, "tunnel": 0, "unreachable": 0}
	for _, p := range peers {
		count[p.Path]++
	}
	for path, n := range count {
		m.peers.WithLabelValues(path).Set(n)
	}
	if err != nil {
		m.networkSyncErrors.Inc()
	}
}
