package report

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sidekey/sidekey/bpf"
)

// CounterSource is the part of the probe the collector reads; *bpf.Probe implements it.
type CounterSource interface {
	Counters() (bpf.Counters, error)
}

// Collector exports the probe's in-kernel counters, the number of watches and the
// records written.
type Collector struct {
	src     CounterSource
	watches func() int
	records *prometheus.CounterVec

	watched, allowed, flagged, denied, rateLimited, dropped, watchesDesc, upDesc *prometheus.Desc
}

// NewCollector returns a collector over src; watches reports the current watch count.
func NewCollector(src CounterSource, watches func() int) *Collector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("sidekey_probe_"+name, help, labels, nil)
	}
	return &Collector{
		src: src, watches: watches,
		records: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sidekey_probe_events_total", Help: "Events reported, by verdict.",
		}, []string{"verdict"}),
		watched:     d("watched_opens_total", "Opens of regular files on watched tmpfs."),
		allowed:     d("allowed_opens_total", "Watched opens by allowed readers."),
		flagged:     d("flagged_opens_total", "Watched opens by anyone else."),
		denied:      d("denied_opens_total", "Flagged opens stopped in enforce mode."),
		rateLimited: d("rate_limited_total", "Flagged opens whose event was suppressed by rate limiting."),
		dropped:     d("dropped_events_total", "Flagged opens whose event was lost because the ring buffer was full.", "cpu"),
		watchesDesc: d("watches", "Watched tmpfs mounts."),
		upDesc:      d("counters_up", "1 when the in-kernel counters could be read."),
	}
}

// Observe counts a record written.
func (c *Collector) Observe(r Record) { c.records.WithLabelValues(r.Verdict).Inc() }

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.watched, c.allowed, c.flagged, c.denied, c.rateLimited, c.dropped, c.watchesDesc, c.upDesc} {
		ch <- d
	}
	c.records.Describe(ch)
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	c.records.Collect(ch)
	ch <- prometheus.MustNewConstMetric(c.watchesDesc, prometheus.GaugeValue, float64(c.watches()))
	cnt, err := c.src.Counters()
	if err != nil {
		ch <- prometheus.MustNewConstMetric(c.upDesc, prometheus.GaugeValue, 0)
		return
	}
	ch <- prometheus.MustNewConstMetric(c.upDesc, prometheus.GaugeValue, 1)
	for d, v := range map[*prometheus.Desc]uint64{
		c.watched: cnt.Watched, c.allowed: cnt.Allowed, c.flagged: cnt.Flagged,
		c.denied: cnt.Denied, c.rateLimited: cnt.RateLimited,
	} {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v))
	}
	for cpu, v := range cnt.DroppedPerCPU {
		ch <- prometheus.MustNewConstMetric(c.dropped, prometheus.CounterValue, float64(v), strconv.Itoa(cpu))
	}
}
