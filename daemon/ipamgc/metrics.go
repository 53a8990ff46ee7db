package ipamgc

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	leader               prometheus.Gauge
	sweeps, released     prometheus.Counter
	errors               prometheus.Counter
	pending, allocations prometheus.Gauge
}

func newMetrics() metrics {
	return metrics{
		leader: prometheus.NewGauge(prometheus.GaugeOpts{Name: "warpd_ipam_gc_leader",
			Help: "1 while this warpd holds the Lease and collects leaked warp-ipam addresses (one per cluster)."}),
		sweeps: prometheus.NewCounter(prometheus.CounterOpts{Name: "warpd_ipam_gc_sweeps_total",
			Help: "Sweeps over every IPAllocation by this warpd."}),
		released: prometheus.NewCounter(prometheus.CounterOpts{Name: "warpd_ipam_gc_released_total",
			Help: "Leaked addresses released (pod gone, or StatefulSet gone or scaled below the ordinal)."}),
		errors: prometheus.NewCounter(prometheus.CounterOpts{Name: "warpd_ipam_gc_errors_total",
			Help: "Sweeps or releases that failed (retried at the next sweep)."}),
		pending: prometheus.NewGauge(prometheus.GaugeOpts{Name: "warpd_ipam_gc_waiting",
			Help: "Addresses that look leaked, waiting out the grace period."}),
		allocations: prometheus.NewGauge(prometheus.GaugeOpts{Name: "warpd_ipam_allocations",
			Help: "IPAllocations seen by the last sweep."}),
	}
}

func (m metrics) all() []prometheus.Collector {
	return []prometheus.Collector{m.leader, m.sweeps, m.released, m.errors, m.pending, m.allocations}
}
