package controller

import (
	"sort"

	"github.com/ferrycluster/ferry/store"
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the controller's Prometheus metrics, on their own registry.
type Metrics struct {
	Registry          *prometheus.Registry
	Migrations        *prometheus.CounterVec
	MigrationDuration prometheus.Histogram
	MigrationDowntime prometheus.Histogram
	MigrationBytes    prometheus.Counter
	Plans             prometheus.Counter
	PlanErrors        prometheus.Counter
	PlanDuration      prometheus.Histogram
	PlanActions       prometheus.Histogram
	PlanExecution     prometheus.Histogram
	Actions           *prometheus.CounterVec
	Heartbeats        prometheus.Counter
	StaleKills        prometheus.Counter
	LostRestarts      *prometheus.CounterVec
	Queue             prometheus.Gauge
	Tasks             *prometheus.GaugeVec
	NodeUsage         *prometheus.GaugeVec
	NodeCapacity      *prometheus.GaugeVec
}

// NewMetrics registers the metrics on a new registry.
func NewMetrics() *Metrics {
	m := &Metrics{
		Registry:          prometheus.NewRegistry(),
		Migrations:        prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ferry_migrations_total", Help: "Migrations (live or remote resume) by result."}, []string{"result"}),
		MigrationDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "ferry_migration_duration_seconds", Help: "Time from dispatch to commit of a migration.", Buckets: prometheus.ExponentialBuckets(0.05, 2, 14)}),
		MigrationDowntime: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "ferry_migration_downtime_seconds", Help: "Downtime the source reported at switch-over.", Buckets: prometheus.ExponentialBuckets(0.001, 2, 14)}),
		MigrationBytes:    prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_migration_bytes_total", Help: "Memory bytes of migrated tasks."}),
		Plans:             prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_plans_total", Help: "Plans journaled."}),
		PlanErrors:        prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_plan_errors_total", Help: "Planner runs that found no plan."}),
		PlanDuration:      prometheus.NewHistogram(prometheus.HistogramOpts{Name: "ferry_plan_duration_seconds", Help: "Policy and planner time per plan.", Buckets: prometheus.ExponentialBuckets(0.001, 2, 14)}),
		PlanActions:       prometheus.NewHistogram(prometheus.HistogramOpts{Name: "ferry_plan_actions", Help: "Actions per plan.", Buckets: prometheus.ExponentialBuckets(1, 2, 16)}),
		PlanExecution:     prometheus.NewHistogram(prometheus.HistogramOpts{Name: "ferry_plan_execution_seconds", Help: "Time from journaling a plan to its last action's end.", Buckets: prometheus.ExponentialBuckets(0.01, 2, 16)}),
		Actions:           prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ferry_actions_total", Help: "Actions by kind and result."}, []string{"kind", "result"}),
		Heartbeats:        prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_heartbeats_total", Help: "Agent heartbeats received or polled."}),
		StaleKills:        prometheus.NewCounter(prometheus.CounterOpts{Name: "ferry_stale_copies_stopped_total", Help: "Stale task copies the controller told agents to stop."}),
		LostRestarts:      prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ferry_lost_tasks_total", Help: "Tasks lost with their node, by what they restart from: replica, image or scratch."}, []string{"from"}),
		Queue:             prometheus.NewGauge(prometheus.GaugeOpts{Name: "ferry_queue_length", Help: "Tasks waiting to run."}),
		Tasks:             prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "ferry_tasks", Help: "Tasks by phase."}, []string{"phase"}),
		NodeUsage:         prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "ferry_node_used", Help: "Demand of running tasks per node and resource."}, []string{"node", "resource"}),
		NodeCapacity:      prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "ferry_node_capacity", Help: "Capacity per node and resource."}, []string{"node", "resource"}),
	}
	m.Registry.MustRegister(m.Migrations, m.MigrationDuration, m.MigrationDowntime, m.MigrationBytes, m.Plans, m.PlanErrors,
		m.PlanDuration, m.PlanActions, m.PlanExecution, m.Actions, m.Heartbeats, m.StaleKills, m.LostRestarts, m.Queue, m.Tasks, m.NodeUsage, m.NodeCapacity)
	return m
}

// gauges refreshes the state gauges from the store.
func (c *Controller) gauges() {
	c.st.View(func(s *store.State) {
		phases := map[store.TaskPhase]int{}
		used := map[string]*store.Resources{}
		for _, t := range s.Tasks {
			phases[t.Phase]++
			if t.Phase == store.TaskRunning {
				u := used[t.Node]
				if u == nil {
					u = &store.Resources{}
					used[t.Node] = u
				}
				u.CPUMilli += t.Demand.CPUMilli
				u.MemoryBytes += t.Demand.MemoryBytes
			}
		}
		c.metrics.Queue.Set(float64(phases[store.TaskWaiting]))
		for _, p := range []store.TaskPhase{store.TaskWaiting, store.TaskRunning, store.TaskSleeping, store.TaskTerminated} {
			c.metrics.Tasks.WithLabelValues(string(p)).Set(float64(phases[p]))
		}
		if len(s.Nodes) > 200 {
			return // per-node series only for small clusters
		}
		for name, n := range s.Nodes {
			u := used[name]
			if u == nil {
				u = &store.Resources{}
			}
			c.metrics.NodeUsage.WithLabelValues(name, ResCPU).Set(float64(u.CPUMilli) / 1000)
			c.metrics.NodeUsage.WithLabelValues(name, ResMemory).Set(float64(u.MemoryBytes))
			c.metrics.NodeCapacity.WithLabelValues(name, ResCPU).Set(float64(n.Capacity.CPUMilli) / 1000)
			c.metrics.NodeCapacity.WithLabelValues(name, ResMemory).Set(float64(n.Capacity.MemoryBytes))
		}
	})
}

func sortedKeys(m map[string]string) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
