// Package report is what tests/loadgen prints and the benchmarks read.
package report

// Report is one loadgen client run.
type Report struct {
	Mode    string  `json:"mode"` // rr, crr, udprr, udpcrr or stream
	Samples int     `json:"samples"`
	Errors  int     `json:"errors"`
	FirstEr string  `json:"firstError,omitempty"`
	Elapsed float64 `json:"elapsedSeconds"`
	Rate    float64 `json:"perSecond"` // samples per second (stream: bytes per second)
	// Latency percentiles in microseconds; a p99 means something only over
	// 1000 samples or more.
	P50 float64 `json:"p50us"`
	P90 float64 `json:"p90us"`
	P99 float64 `json:"p99us"`
	Max float64 `json:"maxus"`
	// Latencies are every sample's, in microseconds (with --samples).
	Latencies []float64 `json:"latenciesUs,omitempty"`
}
