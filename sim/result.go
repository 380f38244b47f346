package sim

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/ferrycluster/ferry/sim/workload"
)

// Tau is the bounded-slowdown threshold (seconds): jobs shorter than Tau
// count as Tau long.
const Tau = 10

// JobResult is one job's outcome. Times are seconds; Start is when all its
// tasks first ran, End when it completed (-1: never).
type JobResult struct {
	Name, Kind string
	Submit     int64
	Tasks      int
	Work       int64
	Start, End int64
	Suspends   int // tasks suspended
	Resumes    int
	Migrations int
	firstTask  int32
}

// Wait is the time from submission to first start.
func (j JobResult) Wait() int64 { return j.Start - j.Submit }

// Response is the time from submission to completion.
func (j JobResult) Response() int64 { return j.End - j.Submit }

// BoundedSlowdown is max(1, response / max(work, Tau)).
func (j JobResult) BoundedSlowdown() float64 {
	return math.Max(1, float64(j.Response())/math.Max(float64(j.Work), Tau))
}

// UtilPoint: from T on, Busy CPUs (Frac of the cluster) did useful work.
type UtilPoint struct {
	T    int64
	Busy float64
	Frac float64
}

// Summary holds the aggregate metrics of a run.
type Summary struct {
	Jobs      int   `json:"jobs"`
	Completed int   `json:"completed"`
	Makespan  int64 `json:"makespan_s"`
	// CumulatedCompletion is the sum over jobs of (end - submit).
	CumulatedCompletion int64   `json:"cumulated_completion_s"`
	MeanWait            float64 `json:"mean_wait_s"`
	MeanResponse        float64 `json:"mean_response_s"`
	MeanBSD             float64 `json:"mean_bounded_slowdown"`
	MaxBSD              float64 `json:"max_bounded_slowdown"`
	Utilization         float64 `json:"utilization"`
	Suspends            int     `json:"suspends"`
	Resumes             int     `json:"resumes"`
	RemoteResumes       int     `json:"remote_resumes"`
	Migrations          int     `json:"migrations"`
	SuspendTime         int64   `json:"suspend_time_s"`
	ResumeTime          int64   `json:"resume_time_s"`
	MigrationTime       int64   `json:"migration_time_s"`
	BytesMoved          int64   `json:"bytes_moved"`
	// Restarts counts tasks shut down after their job ran, to be booted
	// again (the job's work is lost); RestartTime is those shutdowns and
	// boots again.
	Restarts    int   `json:"restarts"`
	RestartTime int64 `json:"restart_time_s"`
}

// Result is a run's outcome.
type Result struct {
	Workload     string  `json:"workload"`
	Policy       string  `json:"policy"`
	Seed         int64   `json:"seed"`
	Summary      Summary `json:"summary"`
	PlannerCalls int     `json:"planner_calls"`
	NoPlans      int     `json:"no_plans"`
	// Observed is true when the policy packed by observed demand (soft
	// resources may then be overbooked: contention).
	Observed  bool          `json:"observed"`
	Wall      time.Duration `json:"-"`
	Jobs      []JobResult   `json:"-"`
	Events    []Event       `json:"-"`
	Util      []UtilPoint   `json:"-"`
	nodeNames []string
}

func (r *Result) summarize(w *workload.Workload, area, totalCPU float64) {
	s := &r.Summary
	s.Jobs = len(r.Jobs)
	var first, last int64 = math.MaxInt64, 0
	var wait, resp, bsd float64
	for _, j := range r.Jobs {
		first = min(first, j.Submit)
		if j.End < 0 {
			continue
		}
		s.Completed++
		last = max(last, j.End)
		s.CumulatedCompletion += j.Response()
		wait += float64(j.Wait())
		resp += float64(j.Response())
		b := j.BoundedSlowdown()
		bsd += b
		s.MaxBSD = math.Max(s.MaxBSD, b)
	}
	if s.Completed > 0 {
		n := float64(s.Completed)
		s.MeanWait, s.MeanResponse, s.MeanBSD = wait/n, resp/n, bsd/n
		s.Makespan = last - first
		if totalCPU > 0 && s.Makespan > 0 {
			s.Utilization = area / (totalCPU * float64(s.Makespan))
		}
	}
}

// Table writes results side by side as aligned text.
func Table(w io.Writer, rs []*Result) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "policy\tjobs\tmakespan\tcumulated\tmean wait\tmean bsd\tutil\tsusp\tres\trestart\tmigr\taction time\tplans\t")
	for _, r := range rs {
		s := r.Summary
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%.2f\t%.1f%%\t%d\t%d\t%d\t%d\t%s\t%d\t\n", r.Policy, s.Completed,
			dur(s.Makespan), dur(s.CumulatedCompletion), dur(int64(s.MeanWait)), s.MeanBSD, 100*s.Utilization,
			s.Suspends, s.Resumes, s.Restarts, s.Migrations, dur(s.SuspendTime+s.ResumeTime+s.MigrationTime+s.RestartTime), r.PlannerCalls)
	}
	return tw.Flush()
}

func dur(s int64) string {
	switch {
	case s < 600:
		return fmt.Sprintf("%ds", s)
	case s < 36000:
		return fmt.Sprintf("%.1fm", float64(s)/60)
	default:
		return fmt.Sprintf("%.1fh", float64(s)/3600)
	}
}

// CSV writes one row per result.
func CSV(w io.Writer, rs []*Result) error {
	var b strings.Builder
	b.WriteString("workload,policy,seed,jobs,completed,makespan_s,cumulated_completion_s,mean_wait_s,mean_response_s,mean_bounded_slowdown,max_bounded_slowdown,utilization,suspends,resumes,remote_resumes,migrations,suspend_time_s,resume_time_s,migration_time_s,bytes_moved,planner_calls,restarts,restart_time_s\n")
	for _, r := range rs {
		s := r.Summary
		fmt.Fprintf(&b, "%s,%s,%d,%d,%d,%d,%d,%.3f,%.3f,%.4f,%.4f,%.4f,%d,%d,%d,%d,%d,%d,%d,%d,%d,%d,%d\n", r.Workload, r.Policy, r.Seed,
			s.Jobs, s.Completed, s.Makespan, s.CumulatedCompletion, s.MeanWait, s.MeanResponse, s.MeanBSD, s.MaxBSD, s.Utilization,
			s.Suspends, s.Resumes, s.RemoteResumes, s.Migrations, s.SuspendTime, s.ResumeTime, s.MigrationTime, s.BytesMoved, r.PlannerCalls, s.Restarts, s.RestartTime)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// JobsCSV writes one row per job.
func (r *Result) JobsCSV(w io.Writer) error {
	var b strings.Builder
	b.WriteString("job,kind,submit,tasks,work,start,end,wait,response,bounded_slowdown,suspends,resumes,migrations\n")
	for _, j := range r.Jobs {
		fmt.Fprintf(&b, "%s,%s,%d,%d,%d,%d,%d,%d,%d,%.4f,%d,%d,%d\n", j.Name, j.Kind, j.Submit, j.Tasks, j.Work, j.Start, j.End,
			j.Wait(), j.Response(), j.BoundedSlowdown(), j.Suspends, j.Resumes, j.Migrations)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// JSON writes the results as a JSON array.
func JSON(w io.Writer, rs []*Result) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(rs)
}

// SortedBySlowdown returns job indices by decreasing bounded slowdown.
func (r *Result) SortedBySlowdown() []int {
	idx := make([]int, len(r.Jobs))
	for i := range idx {
		idx[i] = i
	}
	sort.SliceStable(idx, func(a, b int) bool { return r.Jobs[idx[a]].BoundedSlowdown() > r.Jobs[idx[b]].BoundedSlowdown() })
	return idx
}
